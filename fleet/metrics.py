"""Prometheus exposition: each long-running process serves its own registry."""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, start_http_server

log = structlog.get_logger()

# Seconds; agent tasks run from milliseconds to many minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


def serve_metrics(registry: CollectorRegistry, port: int | None, host: str = "127.0.0.1") -> None:
    if port is None:
        return
    start_http_server(port, addr=host, registry=registry)
    log.info("serving Prometheus metrics", url=f"http://{host}:{port}/metrics")
