"""Block images: thin-provisioned virtual disks made of cluster objects (like Ceph RBD).

An image is a header object (size, object size, creation time, id, lock) plus data
objects of a fixed size named from the image id and the object index; only objects that
were written exist, and missing ones read as zeros. A directory object per pool maps
image names to ids.

- :mod:`store.image.model`: names, sizes, the header and its codec (no I/O);
- :mod:`store.image.layout`: byte ranges to object pieces, extents (no I/O);
- :mod:`store.image.lock`: the exclusive lock and its lease (no I/O);
- :mod:`store.image.header`, :mod:`store.image.admin`: header and directory updates,
  create / list / resize / remove / unlock, over :class:`store.client.api.Client`;
- :mod:`store.image.io`: reading and writing an open image;
- :mod:`store.image.sizes`: what an open image knows of its objects (no I/O);
- :mod:`store.image.lease`: holding the lock of an image while writing it;
- :mod:`store.image.cli`: ``store image ...``.
"""
