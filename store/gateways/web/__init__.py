"""HTTP/1.1 server plumbing on trio and h11, shared by the HTTP and S3 gateways.

Import from ``store.gateways.web.server``: ``serve``, ``Request``, ``Response``,
``BodyReader``, ``Handler`` and the body errors.
"""
