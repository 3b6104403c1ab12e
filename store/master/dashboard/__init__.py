"""The master's web dashboard: a read-only page of the cluster's state, behind an admin login.

- ``handler``: the HTTPS routes (login, logout, the page, its JSON, static files);
- ``sessions``: login sessions and the throttle on failed logins (no I/O);
- ``view``: the JSON document the page shows, from the master's status (no I/O);
- ``static/``: the page itself — HTML, CSS and a little JavaScript, no build step.
"""
