"""The API over tiny random models of the real classes: the RAM fixture (official format), a tiny
Grounding DINO and a tiny SAM. A re-ask with other thresholds re-uses the tagger's result and the
image encodings: neither image encoder runs again, and no model is loaded twice."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from .conftest import wait_ready, write_recipe

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("recognize_grounding_dino")
pytest.importorskip("recognize_sam")
sys.path.insert(0, str(REPO / "plugins" / "recognize-grounding-dino" / "tests"))
pytestmark = pytest.mark.slow


def tiny_recipe(folder: Path, reference: Path) -> Path:
    """RAM fixture -> tiny Grounding DINO -> tiny SAM, with an annotated_image output."""
    from gd_support import write_tiny_checkpoint

    gd = write_tiny_checkpoint(folder / "gd")
    ram = reference / "fixtures" / "ram"
    return write_recipe(folder, {
        "recipe": 1, "name": "tiny_tag_ground_segment", "settings": {"batch_size": 4, "device": "cpu"},
        "stages": [
            {"use": "ram", "with": {"config": str(ram / "config.json"), "checkpoint": str(ram / "checkpoint.pth")}},
            {"use": "grounding_dino", "with": {**gd,
                                               "box_threshold": 0.2, "text_threshold": 0.1,
                                               "image_size": 160, "max_size": 240}},
            {"use": "sam", "with": {"config": {"encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
                                               "encoder_global_attn_indexes": [0]}, "weights": "random"}},
        ],
        "outputs": [{"use": "annotated_image", "with": {"chinese": True}}],
    })


def small_jpeg(path: Path, width: int = 240) -> bytes:
    image = Image.open(path).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_tag_ground_segment_over_http_reuses_image_encodings(tmp_path, reference, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from recognize.serve import ServeSettings, create_app
    from recognize.stage import shared_models

    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    recipe = tiny_recipe(tmp_path, reference)
    photo = small_jpeg(reference / "data" / "images" / "demo" / "demo4.jpg")
    app = create_app(recipe, ServeSettings())
    with TestClient(app) as client:
        wait_ready(client)
        stages = app.state.serve.variants.base.pipeline.stages
        swin = stages[1].detector.model.model.backbone.conv_encoder
        encoder_runs = {"grounding_dino": 0, "sam": 0}
        def counter(name):
            return lambda *args: encoder_runs.__setitem__(name, encoder_runs[name] + 1)

        swin.register_forward_hook(counter("grounding_dino"))
        stages[2].segmenter.sam.image_encoder.register_forward_hook(counter("sam"))

        first = client.post("/v1/frames", files={"images": ("demo4.jpg", photo, "image/jpeg")})
        assert first.status_code == 200, first.text
        body = first.json()
        frame = body["frames"][0]
        assert frame["tags"] and all(t["name_zh"] for t in frame["tags"]) and frame["regions"]
        for region in frame["regions"]:
            assert region["mask"]["size"] == [frame["height"], frame["width"]] and region["mask_score"] is not None
        assert set(body["timings"]) == {"ram", "grounding_dino", "sam"} and body["reused"] == []
        assert encoder_runs == {"grounding_dino": 1, "sam": 1}
        models = shared_models.keys()

        again = client.post("/v1/frames", params={"set": ["stages.1.with.box_threshold=0.3",
                                                          "stages.1.with.text_threshold=0.2"]},
                            files={"images": ("demo4.jpg", photo, "image/jpeg")})
        assert again.status_code == 200, again.text
        assert again.json()["reused"] == ["ram"]
        assert encoder_runs == {"grounding_dino": 1, "sam": 1}  # neither image encoder ran again
        assert shared_models.keys() == models  # and no model was loaded again:
        variant = app.state.serve.variants.get(["stages.1.with.box_threshold=0.3", "stages.1.with.text_threshold=0.2"])
        assert variant.stages[1] is not stages[1] and variant.stages[1].detector is stages[1].detector
        assert variant.stages[0] is stages[0] and variant.stages[2] is stages[2]
        strict = again.json()["frames"][0]
        assert strict["tags"] == frame["tags"]
        assert all(r["score"] > 0.3 for r in strict["regions"])
        assert len(strict["regions"]) <= len(frame["regions"])

        picture = client.post("/v1/annotate?format=png&chinese=true", content=photo,
                              headers={"content-type": "image/jpeg"})
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(picture.content)).width == 240
        assert encoder_runs == {"grounding_dino": 1, "sam": 1}
        metrics = client.get("/metrics").text
        assert "recognize_feature_cache_hits" in metrics
