"""The NBD gateway: an image served as a block device by nbdkit's Python plugin.

- :mod:`.settings`: the plugin's ``key=value`` parameters (no I/O);
- :mod:`.errors`: which errno an NBD client sees for each failure (no I/O);
- :mod:`.launcher`: the small script nbdkit loads, which finds store's packages;
- :mod:`.bridge`: a trio event loop in a thread, called from nbdkit's threads;
- :mod:`.service`: the image as the plugin serves it (trio side);
- :mod:`.process`: the plugin's trio side whole: the metrics port, then the service;
- :mod:`.plugin`: nbdkit's callbacks, thin wrappers over the service;
- :mod:`.cli`: ``store nbd plugin-path`` and ``store nbd serve``.
"""
