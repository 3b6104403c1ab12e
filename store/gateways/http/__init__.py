"""The HTTP gateway: pool objects for browsers and curl (`store http serve`).

See docs/http.md for the protocol and the storage design.
"""
