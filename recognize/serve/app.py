"""The FastAPI application: routes, one-line errors, model loading at start-up.

    POST /v1/frames     images -> Frame JSON (what `recognize run` writes), per-stage timings
    POST /v1/annotate   one image -> the annotated picture (PNG or JPEG)
    GET  /v1/recipe     the recipe as served, and which numbers a request may set
    GET  /v1/stages     every registered stage and its parameters
    GET  /healthz       the process is up           GET /readyz   the models are loaded
    GET  /metrics       Prometheus text             GET /         the web page

Every error reaches the client as `{"detail": "one line"}`; tracebacks stay in the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from recognize import heap
from recognize.errors import RecipeError, RecognizeError
from recognize.feature_cache import content_key, feature_cache
from recognize.frame import Frame
from recognize.serve.batching import Runner, StageFailed, one_line
from recognize.serve.guard import BodyTooLarge, Guard
from recognize.serve.metrics import Metrics
from recognize.serve.settings import ServeSettings
from recognize.serve.uploads import ParsedBody, UploadProblem, decode_image, read_body
from recognize.serve.variants import Variants

log = logging.getLogger("recognize.serve")
STATIC = Path(__file__).resolve().parent / "static"

_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
_BINARY = {"type": "string", "format": "binary"}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "a multipart form with one or more `images` file parts (and optional `set` fields), "
                       "or the bytes of one image with an image/* content type",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["images"],
                "properties": {"images": {"type": "array", "items": _BINARY},
                               "set": {"type": "array", "items": {"type": "string"}}},
            }},
            **{kind: {"schema": _BINARY} for kind in _IMAGE_TYPES},
        },
    }
}
_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}}}
ERRORS = {code: {"description": text, **_ERROR} for code, text in (
    (401, "missing or wrong token"), (413, "body, image or image count over a limit"),
    (415, "unsupported content type"), (422, "not an image, or an invalid option (named)"),
    (500, "a stage failed on this request's images"), (503, "busy (see Retry-After) or models still loading"))}
SET_HELP = ("override a recipe value as `recognize run --set` does, e.g. stages.1.with.box_threshold=0.3 "
            "(repeatable; only stage parameters that do not select weights or files)")


class Problem(Exception):
    """An HTTP error with a one-line reason (and optional headers)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class ServerState:
    """What the routes share: settings, the recipe's variants, the batching runner, readiness."""

    def __init__(self, recipe: str | Path, settings: ServeSettings,
                 on_fatal: Callable[[str, int], None] | None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.variants = Variants(recipe, device=settings.device, max_variants=settings.max_variants)
        self.runner = Runner(settings.max_batch_size, settings.max_wait_ms, settings.result_cache_mb, self.metrics)
        self.on_fatal = on_fatal
        self.ready = False
        self.load_error: str | None = None
        self.inflight = 0
        self.metrics.gauge_function("recognize_feature_cache_bytes", "bytes of image features kept",
                                    lambda: feature_cache.bytes_used)
        self.metrics.gauge_function("recognize_feature_cache_hits", "image encodings reused",
                                    lambda: feature_cache.hits)
        self.metrics.gauge_function("recognize_feature_cache_misses", "image encodings computed",
                                    lambda: feature_cache.misses)

    async def load(self) -> None:
        try:
            await asyncio.to_thread(self.variants.base.pipeline.load)
        except Exception as exc:  # noqa: BLE001 - reported on /readyz and by the CLI, in one line
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("loading the recipe's models failed: %s", self.load_error)
            if self.on_fatal is not None:  # the exit code `recognize run` gives it (3 for any other failure)
                self.on_fatal(self.load_error, exc.exit_code if isinstance(exc, RecognizeError) else 3)
            return
        self.ready = True
        log.info("models loaded; ready")


def create_app(recipe: str | Path, settings: ServeSettings | None = None,
               on_fatal: Callable[[str, int], None] | None = None) -> FastAPI:
    """The application for `recipe`. Models load in the background once it starts (see /readyz)."""
    settings = settings or ServeSettings()
    state = ServerState(recipe, settings, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # uploads spool to temporary files only inside this folder, removed when the server stops
        upload_dir = tempfile.mkdtemp(prefix="recognize-serve-")
        previous_tempdir = tempfile.tempdir
        tempfile.tempdir = upload_dir
        previous_cache = feature_cache.max_bytes
        feature_cache.resize(int(settings.feature_cache_mb * 2**20))
        # freed activations stay for the next layer and the next stage (no page faults) while requests run;
        # they go back when none is left (serve/batching.py). Before the stages' threads start: recognize/heap.py
        heap.keep_freed_memory()
        loading = asyncio.create_task(state.load())
        try:
            yield
        finally:
            loading.cancel()
            await state.runner.close()
            feature_cache.resize(previous_cache)
            tempfile.tempdir = previous_tempdir
            shutil.rmtree(upload_dir, ignore_errors=True)

    app = FastAPI(title="recognize", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Tags, boxes and masks for images, by the recipe this server was started with.")
    app.state.serve = state
    token = settings.token.get_secret_value() if settings.token else None
    app.add_middleware(Guard, token=token, max_body=settings.max_upload_bytes, metrics=state.metrics)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- page and probes --------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The recipe's models are loaded", responses={503: ERRORS[503]})
    async def readyz() -> JSONResponse:
        if state.ready:
            return JSONResponse({"ready": True})
        detail = f"loading failed: {state.load_error}" if state.load_error else "loading models"
        return JSONResponse({"ready": False, "detail": detail}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- descriptions ----------------------------------------------------------------------
    @app.get("/v1/recipe", summary="The recipe as served, and the numbers a request may set")
    async def get_recipe() -> dict:
        return state.variants.describe()

    @app.get("/v1/stages", summary="Every registered stage and its parameters")
    async def get_stages() -> list[dict]:
        from recognize import plugins

        return [{"name": name, "kind": cls.kind, "scope": cls.scope,
                 "summary": (cls.__doc__ or "").strip().split("\n")[0],
                 "params": cls.Params.model_json_schema()} for name, cls in sorted(plugins.stages().items())]

    # -- work ------------------------------------------------------------------------------
    @app.post("/v1/frames", summary="Images in, Frame JSON out", openapi_extra=IMAGE_BODY,
              responses={200: {"description": "`frames`: one Frame per image, in upload order; `timings`: "
                                              "seconds per stage; `reused`: stages whose results were reused"},
                         **ERRORS})
    async def frames(request: Request,
                     set_: list[str] = Query([], alias="set", description=SET_HELP),
                     name: str | None = Query(None, description="file name of a raw-bytes upload")) -> Response:
        return await _serve(request, state, set_, annotate=None)

    @app.post("/v1/annotate", summary="One image in, the annotated picture out", openapi_extra=IMAGE_BODY,
              response_class=Response,
              responses={200: {"content": {"image/png": {"schema": _BINARY}, "image/jpeg": {"schema": _BINARY}},
                               "description": "the image with boxes, masks, labels and a tag/caption band"},
                         **ERRORS})
    async def annotate(request: Request,
                       set_: list[str] = Query([], alias="set", description=SET_HELP),
                       name: str | None = Query(None, description="file name of a raw-bytes upload"),
                       format: str = Query("png", pattern="^(png|jpeg|jpg)$", description="png or jpeg"),
                       chinese: bool = Query(False, description="Chinese tag names (needs a CJK font)")) -> Response:
        return await _serve(request, state, set_, annotate={"format": format, "chinese": chinese})

    return app


# -- the work of one request -------------------------------------------------------------------
_QUERY = {"frames": {"set", "name"}, "annotate": {"set", "name", "format", "chinese"}}


async def _serve(request: Request, state: ServerState, sets: list[str], annotate: dict | None) -> Response:
    route = "annotate" if annotate is not None else "frames"
    unknown = sorted(set(request.query_params) - _QUERY[route])
    if unknown:
        raise Problem(422, f"unknown option {unknown[0]!r}; options: {', '.join(sorted(_QUERY[route]))}")
    if not state.ready:
        detail = f"models failed to load: {state.load_error}" if state.load_error else "models are loading"
        raise Problem(503, detail, {"Retry-After": str(state.settings.retry_after_s)})
    settings = state.settings
    if state.inflight >= settings.max_queue:
        state.metrics.rejected.inc()
        raise Problem(503, f"busy: {state.inflight} requests in progress", {"Retry-After": str(settings.retry_after_s)})
    state.inflight += 1
    state.metrics.queue_depth.inc()
    try:
        try:
            body = await read_body(request, settings.max_images)
        except UploadProblem as problem:
            raise Problem(problem.status, problem.reason) from None
        except ClientDisconnect:
            return Response(status_code=499)
        # only now, with the body read, may the disconnect watcher read from the connection
        return await _until_done_or_gone(request, _work(body, state, sets, annotate))
    finally:
        state.inflight -= 1
        state.metrics.queue_depth.dec()


async def _until_done_or_gone(request: Request, work: Any) -> Response:
    """Run `work`; if the client disconnects first, cancel it (its queue slots are freed)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                log.info("client went away; request cancelled")
                return Response(status_code=499)
    finally:
        if not task.done():
            task.cancel()


async def _work(body: ParsedBody, state: ServerState, sets: list[str], annotate: dict | None) -> Response:
    settings = state.settings
    allowed = {"set"} | ({"format", "chinese"} if annotate is not None else set())
    for key in body.fields:
        if key not in allowed:
            raise Problem(422, f"unknown option {key!r}; form fields: images, {', '.join(sorted(allowed))}")
    sets = [*sets, *body.fields.get("set", [])]
    if annotate is not None:
        annotate = _form_annotate_options(annotate, body.fields)
    if not body.uploads:
        raise Problem(422, "no image in the request: send multipart 'images' parts or one image's bytes")
    if len(body.uploads) > settings.max_images:
        raise Problem(413, f"{len(body.uploads)} images is over the limit of {settings.max_images} per request")
    if annotate is not None and len(body.uploads) != 1:
        raise Problem(422, f"annotate takes one image, got {len(body.uploads)}")
    try:
        variant = await asyncio.to_thread(state.variants.get, sets)
    except RecipeError as exc:
        raise Problem(422, str(exc)) from None

    def decode() -> tuple[list[Frame], list[str]]:
        frames, keys = [], []
        for upload in body.uploads:
            image = decode_image(upload, settings.max_pixels)
            frames.append(Frame.from_array(image, source=f"upload:{upload.name}", name=Path(upload.name).stem))
            keys.append(content_key(image))
        return frames, keys

    try:
        frames, keys = await asyncio.to_thread(decode)
    except UploadProblem as problem:
        raise Problem(problem.status, problem.reason) from None
    try:
        result = await state.runner.run(variant, frames, keys)
    except StageFailed as exc:
        raise Problem(500, str(exc)) from None
    for stage_name in result.reused:
        state.metrics.reused.labels(stage_name).inc()
    timing = ", ".join(f"{n};dur={s * 1000:.1f}" for n, s in result.timings.items())
    headers = {"Server-Timing": timing} if timing else {}
    if annotate is not None:
        data, media = await asyncio.to_thread(_render, variant, result.frames[0], annotate)
        return Response(data, media_type=media, headers=headers)

    def payload() -> bytes:
        body = {"recipe": variant.pipeline.name, "frames": [f.model_dump(mode="json") for f in result.frames],
                "timings": result.timings, "reused": result.reused}
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    return Response(await asyncio.to_thread(payload), media_type="application/json", headers=headers)


def _form_annotate_options(options: dict, fields: dict[str, list[str]]) -> dict:
    options = dict(options)
    if "format" in fields:
        value = fields["format"][-1].lower()
        if value not in ("png", "jpeg", "jpg"):
            raise Problem(422, f"format: expected png or jpeg, got {value!r}")
        options["format"] = value
    if "chinese" in fields:
        value = fields["chinese"][-1].lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise Problem(422, f"chinese: expected true or false, got {value!r}")
        options["chinese"] = value in ("true", "1", "yes")
    return options


def _render(variant: Any, frame: Frame, options: dict) -> tuple[bytes, str]:
    """The annotated picture with the recipe's `annotated_image` settings, if it has one."""
    from recognize.outputs.annotated_image import AnnotatedImage

    base = next((o for o in variant.pipeline.outputs if isinstance(o, AnnotatedImage)), None)
    params = base.params.model_dump(exclude_unset=True) if base is not None else {}
    jpeg = options["format"] in ("jpeg", "jpg")
    stage = AnnotatedImage({**params, "format": "jpg" if jpeg else "png", "chinese": options["chinese"]})
    return stage.encode(frame), "image/jpeg" if jpeg else "image/png"


# -- errors -------------------------------------------------------------------------------------
def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse({"detail": detail.splitlines()[0] if detail else ""}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({one_line(exc)[:200]})"}, status_code=500)
