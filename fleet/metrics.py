"""Prometheus exposition: each long-running process serves its own registry, and on the
same port any extra documents it publishes (a worker's agent card at
``/.well-known/agent-card.json``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

log = structlog.get_logger()

# Seconds; agent tasks run from milliseconds to many minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


# A route's document: (content type, body), computed on each request.
Document = Callable[[], tuple[str, bytes]]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no stderr line per scrape


def serve_metrics(
    registry: CollectorRegistry,
    port: int | None,
    host: str = "127.0.0.1",
    routes: Mapping[str, Document] | None = None,
) -> None:
    if port is None:
        return
    if not routes:
        start_http_server(port, addr=host, registry=registry)
    else:
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            document = routes.get(environ.get("PATH_INFO", ""))
            if document is None or environ.get("REQUEST_METHOD") != "GET":
                result: Iterable[bytes] = metrics(environ, start_response)
                return result
            content_type, body = document()
            start_response("200 OK", [("Content-Type", content_type)])
            return [body]

        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("serving Prometheus metrics", url=f"http://{host}:{port}/metrics")
