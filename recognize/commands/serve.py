"""`recognize serve RECIPE`: the recipe behind an HTTP API and a web page (needs the `serve` extra).

FastAPI and uvicorn are imported inside the command, so `recognize --help` stays fast and works
without the extra installed.
"""

from __future__ import annotations

import socket

import click

from recognize.errors import RecognizeError


class ServeError(RecognizeError):
    exit_code = 2


def check_can_listen(host: str, port: int) -> None:
    """Refuse a busy or unusable address before the models load (minutes for big ones): uvicorn
    only binds after its start-up, then exits with its own status 3, which here means weights."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                         "(choose another --port or --host)") from None


@click.command("serve")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address needs --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="RECOGNIZE_SERVE_TOKEN", default=None, show_envvar=True,
              help="Bearer token required on every route but /healthz.")
@click.option("--max-batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Most frames one stage call takes from concurrent requests.")
@click.option("--max-wait-ms", default=10.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="How long a stage waits for more requests to fill a batch.")
@click.option("--max-queue", default=32, show_default=True, type=click.IntRange(min=1),
              help="Image requests admitted at once; more are answered 503 with Retry-After.")
@click.option("--max-upload-mb", default=25.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body (413 above).")
@click.option("--max-pixels", default=40_000_000, show_default=True, type=click.IntRange(min=1),
              help="Largest image in pixels (413 above).")
@click.option("--max-images", default=16, show_default=True, type=click.IntRange(min=1),
              help="Most images in one request.")
@click.option("--feature-cache-mb", default=512.0, show_default=True, type=click.FloatRange(min=0),
              help="Image features (SAM, Grounding DINO) kept so re-asking about an image skips its encoder.")
@click.option("--result-cache-mb", default=256.0, show_default=True, type=click.FloatRange(min=0),
              help="Per-stage results kept so re-asking with another threshold re-runs only later stages.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
              help="Where models run (overrides the recipe).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve_command(recipe, host, port, token, max_batch_size, max_wait_ms, max_queue, max_upload_mb, max_pixels,
                  max_images, feature_cache_mb, result_cache_mb, device, log_level):
    """Serve RECIPE over HTTP until SIGTERM or Ctrl-C (then finish the requests in flight, exit 0).

    \b
    Web page:  http://HOST:PORT/
    API:       POST /v1/frames, POST /v1/annotate, GET /v1/recipe, GET /v1/stages,
               GET /healthz, GET /readyz, GET /metrics, OpenAPI at /openapi.json
    Example:   curl -F images=@photo.jpg http://127.0.0.1:8000/v1/frames
    """
    import logging
    import signal

    try:
        import uvicorn
        from pydantic import ValidationError

        from recognize.serve import ServeSettings, create_app
    except ImportError as exc:
        raise ServeError(f"`recognize serve` needs the serve extra ({exc.name} is missing): "
                         "pip install 'recognize[serve]'") from None
    try:
        settings = ServeSettings(host=host, port=port, token=token or None, max_batch_size=max_batch_size,
                                 max_wait_ms=max_wait_ms, max_queue=max_queue, max_upload_mb=max_upload_mb,
                                 max_pixels=max_pixels, max_images=max_images, feature_cache_mb=feature_cache_mb,
                                 result_cache_mb=result_cache_mb, device=device)
    except ValidationError as exc:
        raise ServeError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    fatal: list[tuple[str, int]] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str, exit_code: int) -> None:
        fatal.append((message, exit_code))
        if server is not None:
            server.should_exit = True

    check_can_listen(host, port)
    app = create_app(recipe, settings, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None,
                            server_header=False, access_log=log_level == "debug")
    server = uvicorn.Server(config)
    click.echo(f"recognize serve: {recipe} on http://{host if ':' not in host else f'[{host}]'}:{port}/ "
               "(loading models; see /readyz)", err=True)
    # uvicorn drains on SIGTERM / SIGINT, then re-raises the signal to whatever handler was there
    # before it; a drained shutdown is a clean exit, so that handler does nothing (exit status 0).
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except SystemExit:  # uvicorn's own start-up failure, logged above: the address taken since the check
        if not fatal:
            raise ServeError(f"could not listen on {host}:{port} (see the log above)") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if fatal:
        error = RecognizeError(f"cannot serve {recipe}: {fatal[0][0]}")
        error.exit_code = fatal[0][1]  # the load error's, as `recognize run` exits (3 weights, 2 a setting)
        raise error
    if not server.started:
        raise RecognizeError(f"could not listen on {host}:{port} (see the log above)")


def add_commands(cli: click.Group) -> None:
    cli.add_command(serve_command)
