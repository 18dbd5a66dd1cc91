"""ASGI middleware in front of every route: bearer token, body size limit, request metrics.

A plain ASGI class rather than Starlette's BaseHTTPMiddleware, so that request bodies stream
through it (the size limit counts bytes as they arrive) and handlers still see a client that
disconnects.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from typing import Any

from recognize.serve.metrics import Metrics

#: routes anyone may call (a load balancer's liveness probe carries no token)
OPEN_PATHS = frozenset({"/healthz"})
_ROUTES = ("/v1/frames", "/v1/annotate", "/v1/recipe", "/v1/stages", "/healthz", "/readyz", "/metrics",
           "/openapi.json", "/")


class BodyTooLarge(Exception):
    """Raised from `receive` once a body passes the limit; the app answers 413."""


def route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


def token_matches(headers: dict[bytes, bytes], token: bytes) -> bool:
    """`Authorization: Bearer TOKEN`, or HTTP Basic with TOKEN as password (what a browser sends
    after its login prompt, for the web page). Compared in constant time."""
    value = headers.get(b"authorization", b"")
    scheme, _, credential = value.partition(b" ")
    scheme = scheme.lower()
    if scheme == b"basic":
        try:
            credential = base64.b64decode(credential.strip(), validate=True).partition(b":")[2]
        except ValueError:
            credential = b""
    elif scheme != b"bearer":
        credential = b""
    return hmac.compare_digest(credential.strip(), token)


class Guard:
    def __init__(self, app: Any, *, token: str | None, max_body: int, metrics: Metrics) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            if self.token is not None and scope["path"] not in OPEN_PATHS and not token_matches(headers, self.token):
                # browsers get a login prompt for the page; API clients see Bearer
                page = route in ("/", "/static")
                challenge = b'Basic realm="recognize serve"' if page else b'Bearer realm="recognize"'
                await _reply(send_status, 401, "missing or wrong token (send Authorization: Bearer TOKEN)",
                             [(b"www-authenticate", challenge)])
                return
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    too_big = int(length) > self.max_body
                except ValueError:
                    await _reply(send_status, 400, "invalid Content-Length header")
                    return
                if too_big:
                    await _reply(send_status, 413, f"request body is over the {self.max_body}-byte limit",
                                 [(b"connection", b"close")])
                    return
            await self.app(scope, self._counting(receive), send_status)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _counting(self, receive: Any) -> Any:
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(f"request body is over the {self.max_body}-byte limit")
            return message

        return counted


async def _reply(send: Any, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
