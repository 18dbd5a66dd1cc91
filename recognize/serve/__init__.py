"""`recognize serve`: one recipe behind an HTTP API and a web page, its models loaded once.

    settings.py   what an operator can tune (limits, batching, token)
    uploads.py    request bodies -> decoded images, with size and pixel limits
    variants.py   per-request overrides -> Pipeline variants that share loaded stages
    batching.py   per-stage micro-batching of concurrent requests, per-image result reuse
    metrics.py    Prometheus counters and histograms
    guard.py      ASGI middleware: bearer token, body size limit, request metrics
    app.py        the FastAPI application (routes, errors, lifespan)
    static/       the web page (plain HTML/JS/CSS, no build step, no CDN)
"""

from recognize.serve.app import create_app
from recognize.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
