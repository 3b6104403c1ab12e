"""Prometheus metrics, health endpoints and the counters behind them.

- ``stats``: plain counters and the latency histogram the hot paths use (no I/O);
- ``families``: turning them into Prometheus families at scrape time;
- ``endpoint``: the HTTP port serving ``/metrics``, ``/healthz``, ``/readyz``, ``/config``;
- ``osd``, ``master``, ``client``: what each kind of process exposes.

Import from the submodules; this package imports nothing so that hot modules can use
``stats`` without pulling in the HTTP server.
"""
