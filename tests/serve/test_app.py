"""Every route and every error code of the API, in-process (FastAPI's TestClient) on test stages."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from recognize.frame import Frame

from .conftest import TEST_RECIPE, png_bytes, wait_ready, write_recipe

PNG = {"content-type": "image/png"}


def one_line_error(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    return detail


# -- probes, descriptions, page ------------------------------------------------------------------
def test_probes_recipe_stages_openapi_and_page(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}
    recipe = client.get("/v1/recipe").json()
    assert recipe["name"] == "test" and [s["use"] for s in recipe["stages"]] == ["brightness", "center_box", "box_mask"]
    assert recipe["stages"][1]["settable"][0]["name"] == "score"
    stages = {s["name"]: s for s in client.get("/v1/stages").json()}
    assert stages["center_box"]["kind"] == "localizer" and "score" in stages["center_box"]["params"]["properties"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/frames", "/v1/annotate", "/v1/recipe", "/v1/stages", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/frames"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/static/app.js" in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert "cdn" not in page.text.lower() and "http" not in client.get("/static/app.js").text.split("PALETTE")[0]
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


# -- frames ------------------------------------------------------------------------------------------
def test_frames_multipart_gives_the_frame_json_run_writes(client) -> None:
    response = client.post("/v1/frames", files=[("images", ("white.png", png_bytes(230), "image/png")),
                                                ("images", ("black.jpg", png_bytes(10, fmt="JPEG"), "image/jpeg"))])
    assert response.status_code == 200
    body = response.json()
    assert set(body["timings"]) == {"brightness", "center_box", "box_mask"} and body["reused"] == []
    assert "brightness;dur=" in response.headers["server-timing"]
    frames = [Frame.model_validate(f) for f in body["frames"]]
    assert [f.name for f in frames] == ["white", "black"]
    assert [f.tags[0].name for f in frames] == ["bright", "dark"] and frames[0].tags[0].name_zh == "亮"
    region = frames[0].regions[0]
    assert region.box == (15.0, 10.0, 45.0, 30.0) and region.score == 0.8
    assert region.mask.shape == (40, 60) and region.mask.sum() == 30 * 20  # decoded from COCO RLE
    assert body["frames"][0]["regions"][0]["mask"]["size"] == [40, 60]
    assert frames[0].source == "upload:white.png"


def test_frames_raw_bytes_and_overrides_like_set(client) -> None:
    response = client.post("/v1/frames?set=stages.1.with.score=0.3&name=cat.png", content=png_bytes(), headers=PNG)
    assert response.status_code == 200
    frame = response.json()["frames"][0]
    assert frame["name"] == "cat" and frame["regions"][0]["score"] == 0.3
    form = client.post("/v1/frames", files={"images": ("a.png", png_bytes(), "image/png")},
                       data={"set": "stages.1.with.score=0.4"})
    assert form.json()["frames"][0]["regions"][0]["score"] == 0.4


def test_a_re_ask_with_another_threshold_reuses_earlier_stages(client) -> None:
    first = client.post("/v1/frames", content=png_bytes(180), headers=PNG).json()
    again = client.post("/v1/frames?set=stages.1.with.score=0.6", content=png_bytes(180), headers=PNG).json()
    assert first["reused"] == [] and again["reused"] == ["brightness"]
    assert again["frames"][0]["tags"] == first["frames"][0]["tags"]
    assert again["frames"][0]["regions"][0]["score"] == 0.6
    same = client.post("/v1/frames", content=png_bytes(180), headers=PNG).json()
    assert same["reused"] == ["brightness", "center_box", "box_mask"] and same["frames"] == first["frames"]
    metrics = client.get("/metrics").text
    assert 'recognize_stage_results_reused_total{stage="brightness"} 2.0' in metrics


@pytest.mark.parametrize("set_, field", [
    ("stages.1.with.scor=0.5", "stages[1].with.scor"),
    ("stages.1.with.score=high", "stages[1].with.score"),
    ("stages.7.with.score=1", "stages.7"),
    ("settings.device=cuda", "settings.device"),
    ("stages.0.use=explode", "stages.0.use"),
    ("outputs.0.with.font=/etc/passwd", "font"),
    ("stages.0.with.device=cuda", "device"),
    ("novalue", "novalue"),
])
def test_bad_overrides_are_422_naming_the_field(client, set_, field) -> None:
    response = client.post("/v1/frames", params={"set": set_}, content=png_bytes(), headers=PNG)
    assert response.status_code == 422
    assert field in one_line_error(response)


def test_unknown_options_are_422_naming_them(client) -> None:
    response = client.post("/v1/frames?threshold=0.3", content=png_bytes(), headers=PNG)
    assert response.status_code == 422 and "'threshold'" in one_line_error(response)
    response = client.post("/v1/frames", files={"images": ("a.png", png_bytes(), "image/png")}, data={"tresh": "1"})
    assert response.status_code == 422 and "'tresh'" in one_line_error(response)
    response = client.post("/v1/frames", files={"photo": ("a.png", png_bytes(), "image/png")})
    assert response.status_code == 422 and "'photo'" in one_line_error(response)


@pytest.mark.parametrize("body, reason", [
    (b"this is not an image", "not an image"),
    (png_bytes()[:60], "truncated"),
    (b"", "no image"),
])
def test_bad_images_are_422_with_one_line(client, body, reason) -> None:
    response = client.post("/v1/frames", content=body, headers=PNG)
    assert response.status_code == 422 and reason in one_line_error(response)
    response = client.post("/v1/frames", files={"images": ("bad.jpg", body or b"x", "image/jpeg")})
    assert response.status_code == 422 and "bad.jpg" in one_line_error(response)


def test_wrong_content_type_is_415(client) -> None:
    response = client.post("/v1/frames", content=b"{}", headers={"content-type": "application/json"})
    assert response.status_code == 415 and "multipart" in one_line_error(response)


def test_limits_are_413(make_client, test_recipe) -> None:
    client = make_client(test_recipe, max_upload_mb=0.01, max_pixels=60 * 40, max_images=2)
    big = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, "PNG")  # ~19 KB of noise: over 10 KiB
    response = client.post("/v1/frames", content=buffer.getvalue(), headers=PNG)
    assert response.status_code == 413 and "byte limit" in one_line_error(response)

    def chunks():
        yield buffer.getvalue()[:8000]
        yield buffer.getvalue()[8000:]

    response = client.post("/v1/frames", content=chunks(), headers=PNG)  # no Content-Length: counted as it streams
    assert response.status_code == 413 and "byte limit" in one_line_error(response)
    boundary = b"b0und"
    form = (b"--b0und\r\nContent-Disposition: form-data; name=\"images\"; filename=\"n.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + buffer.getvalue() + b"\r\n--b0und--\r\n")
    response = client.post("/v1/frames", content=iter([form[:5000], form[5000:]]),
                           headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"})
    assert response.status_code == 413 and "byte limit" in one_line_error(response)
    response = client.post("/v1/frames", content=png_bytes(size=(41, 60)), headers=PNG)
    assert response.status_code == 413 and "pixel limit" in one_line_error(response)
    three = [("images", (f"{i}.png", png_bytes(), "image/png")) for i in range(3)]
    response = client.post("/v1/frames", files=three)
    assert response.status_code == 413 and "2 images" in one_line_error(response)
    assert client.post("/v1/frames", content=png_bytes(), headers=PNG).status_code == 200


def test_a_stage_error_fails_that_request_only(make_client, tmp_path) -> None:
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "brightness"}, {"use": "explode"}]})
    client = make_client(recipe)
    response = client.post("/v1/frames?name=boom.png", content=png_bytes(), headers=PNG)
    assert response.status_code == 500
    assert one_line_error(response) == "stage 'explode' failed: RuntimeError: exploded on purpose"
    assert client.post("/v1/frames?name=fine.png", content=png_bytes(), headers=PNG).status_code == 200
    assert client.get("/healthz").status_code == 200


# -- annotate --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, media, pil_format", [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG")])
def test_annotate_returns_the_picture(client, fmt, media, pil_format) -> None:
    response = client.post(f"/v1/annotate?format={fmt}&chinese=true", content=png_bytes(230, size=(80, 120)),
                           headers=PNG)
    assert response.status_code == 200 and response.headers["content-type"] == media
    image = Image.open(io.BytesIO(response.content))
    assert image.format == pil_format and image.width == 120 and image.height > 80  # the tag band below
    assert "box_mask;dur=" in response.headers["server-timing"]


def test_annotate_errors(client) -> None:
    two = [("images", (f"{i}.png", png_bytes(), "image/png")) for i in range(2)]
    response = client.post("/v1/annotate", files=two)
    assert response.status_code == 422 and "one image" in one_line_error(response)
    response = client.post("/v1/annotate?format=gif", content=png_bytes(), headers=PNG)
    assert response.status_code == 422 and "format" in one_line_error(response)
    response = client.post("/v1/annotate", files={"images": ("a.png", png_bytes(), "image/png")},
                           data={"format": "bmp"})
    assert response.status_code == 422 and "format" in one_line_error(response)


# -- metrics --------------------------------------------------------------------------------------------
def test_metrics_are_prometheus_text(client) -> None:
    client.post("/v1/frames", content=png_bytes(), headers=PNG)
    client.post("/v1/frames", content=b"junk", headers=PNG)
    text = client.get("/metrics").text
    for name in ("recognize_requests_total", "recognize_request_errors_total", "recognize_request_seconds_bucket",
                 "recognize_queue_depth", "recognize_batch_frames_bucket", "recognize_batch_requests_bucket",
                 "recognize_stage_seconds_bucket", "recognize_feature_cache_bytes"):
        assert name in text, name
    assert 'recognize_requests_total{route="/v1/frames",status="200"} 1.0' in text
    assert 'recognize_request_errors_total{route="/v1/frames",status="422"} 1.0' in text
    assert "recognize_queue_depth 0.0" in text


# -- token --------------------------------------------------------------------------------------------
def test_token_is_required_on_every_route_but_healthz(make_client, test_recipe) -> None:
    client = make_client(test_recipe, ready=False, token="s3cret")
    assert client.get("/healthz").status_code == 200
    for method, path in (("get", "/readyz"), ("get", "/metrics"), ("get", "/v1/recipe"), ("get", "/v1/stages"),
                         ("get", "/openapi.json"), ("get", "/"), ("get", "/static/app.js"), ("post", "/v1/frames"),
                         ("post", "/v1/annotate")):
        response = getattr(client, method)(path)
        assert response.status_code == 401, path
        assert "token" in one_line_error(response)
        wrong = getattr(client, method)(path, headers={"authorization": "Bearer s3cret-not"})
        assert wrong.status_code == 401, path
    assert client.get("/").headers["www-authenticate"].startswith("Basic")  # the browser asks for it
    assert client.get("/v1/recipe").headers["www-authenticate"].startswith("Bearer")
    good = {"authorization": "Bearer s3cret"}
    basic = {"authorization": "Basic " + base64.b64encode(b"me:s3cret").decode()}
    for headers in (good, basic):
        assert client.get("/v1/recipe", headers=headers).status_code == 200
        assert client.get("/", headers=headers).status_code == 200
    client.headers.update(good)
    wait_ready(client)
    assert client.post("/v1/frames", content=png_bytes(), headers=PNG).status_code == 200


def test_settings_refuse_a_public_address_without_token() -> None:
    from pydantic import ValidationError

    from recognize.serve import ServeSettings

    with pytest.raises(ValidationError, match="token"):
        ServeSettings(host="0.0.0.0")
    assert ServeSettings(host="0.0.0.0", token="x").host == "0.0.0.0"
    for loopback in ("127.0.0.1", "127.3.2.1", "::1", "localhost"):
        assert ServeSettings(host=loopback).token is None


# -- readiness --------------------------------------------------------------------------------------------
def test_not_ready_while_loading_then_ready(make_client, tmp_path, serve_stages) -> None:
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "slow_load"}]})
    client = make_client(recipe, ready=False)
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["detail"] == "loading models"
    busy = client.post("/v1/frames", content=png_bytes(), headers=PNG)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    serve_stages.LOADED.set()
    wait_ready(client)
    assert client.post("/v1/frames", content=png_bytes(), headers=PNG).status_code == 200


def test_a_load_failure_is_reported_not_served(make_client, tmp_path, serve_stages) -> None:
    from fastapi.testclient import TestClient

    from recognize.serve import create_app

    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "slow_load"}]})
    fatal: list[tuple[str, int]] = []
    serve_stages.LOAD_FAILS.set()
    serve_stages.LOADED.set()
    with TestClient(create_app(recipe, on_fatal=lambda message, code: fatal.append((message, code)))) as client:
        for _ in range(200):
            if fatal:
                break
            threading.Event().wait(0.02)
        assert fatal == [("weights.bin: not found; put it at /models/weights.bin", 3)]  # exit 3: weights
        response = client.get("/readyz")
        assert response.status_code == 503 and "weights.bin" in response.json()["detail"]
        assert client.post("/v1/frames", content=png_bytes(), headers=PNG).status_code == 503


# -- concurrency ------------------------------------------------------------------------------------------
def _post_in_thread(client, results: list, value: int, name: str = "x.png", params: dict | None = None):
    def post():
        results.append(client.post("/v1/frames", params={"name": name, **(params or {})},
                                   content=png_bytes(value), headers=PNG))

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def _wait_for(predicate, timeout: float = 30.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        event.wait(0.02)
    raise AssertionError("condition not reached")


def test_concurrent_requests_share_micro_batches(make_client, tmp_path, serve_stages) -> None:
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "brightness"}, {"use": "gate"}]})
    client = make_client(recipe, max_batch_size=8, max_wait_ms=50)
    results: list = []
    first = _post_in_thread(client, results, 250)
    _wait_for(lambda: serve_stages.CALLS == [1])  # the first request holds the gate stage
    others = [_post_in_thread(client, results, v) for v in (10, 240, 20)]
    _wait_for(lambda: 'recognize_stage_queue_frames{stage="gate"} 3.0' in client.get("/metrics").text)
    serve_stages.GATE.set()
    for thread in (first, *others):
        thread.join(timeout=60)
    assert [r.status_code for r in results] == [200] * 4
    assert serve_stages.CALLS == [1, 3]  # three waiting requests, one stage call
    tags = sorted(tuple(t["name"] for t in r.json()["frames"][0]["tags"]) for r in results)
    assert tags == [("bright", "seen")] * 2 + [("dark", "seen")] * 2
    metrics = client.get("/metrics").text
    assert 'recognize_batch_requests_bucket{le="1.0",stage="gate"} 1.0' in metrics
    assert 'recognize_batch_requests_count{stage="gate"} 2.0' in metrics


def test_a_stage_error_in_a_merged_batch_fails_only_its_request(make_client, tmp_path, serve_stages) -> None:
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "gate"}, {"use": "explode"}]})
    client = make_client(recipe, max_batch_size=8, max_wait_ms=50)
    results: list = []
    threads = [_post_in_thread(client, results, 100, name="first.png")]
    _wait_for(lambda: serve_stages.CALLS == [1])
    threads += [_post_in_thread(client, results, 100, name=n) for n in ("ok.png", "boom.png")]
    _wait_for(lambda: 'recognize_stage_queue_frames{stage="gate"} 2.0' in client.get("/metrics").text)
    serve_stages.GATE.set()
    for thread in threads:
        thread.join(timeout=60)
    by_name = {}
    for r in results:
        by_name[r.json()["frames"][0]["name"] if r.status_code == 200 else "boom"] = r.status_code
    assert by_name == {"first": 200, "ok": 200, "boom": 500}
    assert serve_stages.CALLS == [1, 2]


def test_a_full_queue_answers_503_with_retry_after(make_client, tmp_path, serve_stages) -> None:
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "gate"}]})
    client = make_client(recipe, max_queue=1)
    results: list = []
    holder = _post_in_thread(client, results, 100)
    _wait_for(lambda: serve_stages.CALLS == [1])
    response = client.post("/v1/frames", content=png_bytes(), headers=PNG)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "busy" in one_line_error(response)
    assert "recognize_rejected_total 1.0" in client.get("/metrics").text
    serve_stages.GATE.set()
    holder.join(timeout=60)
    assert results[0].status_code == 200
    assert client.post("/v1/frames", content=png_bytes(), headers=PNG).status_code == 200


def test_threshold_variants_share_one_loaded_model(make_client, tmp_path, serve_stages) -> None:
    serve_stages.BUILDS.clear()
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "counted", "with": {"model": "m1"}}]})
    client = make_client(recipe)
    tags = []
    for threshold in (0.1, 0.9, 0.5, 0.1):
        response = client.post("/v1/frames", params={"set": f"stages.0.with.threshold={threshold}"},
                               content=png_bytes(150), headers=PNG)
        tags.append([t["name"] for t in response.json()["frames"][0]["tags"]])
    assert tags == [["lit"], [], ["lit"], ["lit"]]
    assert serve_stages.BUILDS == {"m1": 1}
    response = client.post("/v1/frames", params={"set": "stages.0.with.model=m2"}, content=png_bytes(), headers=PNG)
    assert response.status_code == 422 and "'model'" in one_line_error(response)


def test_upload_temp_files_live_in_a_folder_removed_at_shutdown(make_client, test_recipe) -> None:
    import tempfile
    from pathlib import Path

    client = make_client(test_recipe)
    folder = Path(tempfile.gettempdir())
    assert folder.name.startswith("recognize-serve-") and folder.is_dir()
    big = np.random.default_rng(1).integers(0, 255, (700, 700, 3), dtype=np.uint8)  # > 1 MB: spooled to disk
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, "PNG")
    response = client.post("/v1/frames", files={"images": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200
    assert list(folder.iterdir()) == []  # the spooled part is deleted with the request
    client.__exit__(None, None, None)
    assert not folder.exists() and not tempfile.gettempdir().startswith(str(folder))
