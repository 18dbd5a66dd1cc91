"""Fuzz-style: a seeded, generated corpus of broken images, recipes and COCO files thrown at the commands.

For every input: the exit code is 0, 1, 2 or 3, nothing escapes as a traceback, no file appears
outside OUT and no partial (`*.part`) file is left in it. The corpus is generated from a fixed seed,
so a failure names a case that can be replayed; its size is fixed, so the test stays bounded.

The recipes run in-process through click's runner (the CLI's own code path; an exception that the
CLI does not turn into one line shows up as `result.exception`), since a subprocess costs seconds
of imports each; one subprocess run over the whole broken-image folder checks the real process.
"""

from __future__ import annotations

import codecs
import copy
import io
import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from clihelp import cli_env
from PIL import Image

from recognize.errors import RecipeError
from recognize.frame import Frame, Region, mask_to_rle
from recognize.pipeline import Pipeline
from recognize.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SEED = 20261201
ALLOWED_EXIT = {0, 1, 2, 3}

#: the tiny recipe the run fuzzing mutates: test stages only (tests/support/teststages.py)
TINY = {
    "recipe": 1,
    "name": "tiny",
    "settings": {"batch_size": 2},
    "stages": [{"use": "brightness", "with": {"cutoff": 100}}, {"use": "center_box", "with": {"score": 0.5}},
               {"use": "box_mask"}],
    "outputs": [{"use": "json", "with": {"indent": 2}}, {"use": "coco"}],
}
WEIRD_VALUES = [True, False, None, "x", "", -1, 0, 1e308, float("nan"), 10**12, [], {}, [1, 2], {"a": 1},
                "../../escape", "/abs/path", "\x00", "é" * 300]


# -- corpus: images --------------------------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def image_corpus(rng: random.Random) -> dict[str, bytes]:
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    bases = {
        "png": _encoded(rgb, "PNG"),
        "jpg": _encoded(rgb, "JPEG"),
        "tif": _encoded(rgb.convert("CMYK"), "TIFF"),
        "gif": _encoded(rgb.convert("P"), "GIF"),
        "bmp": _encoded(rgb, "BMP"),
        "webp": _encoded(rgb, "WEBP"),
    }
    sixteen = Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)  # 16-bit gray
    corpus = {
        "good.png": bases["png"],
        "cmyk.tif": bases["tif"],
        "sixteen.png": _encoded(sixteen, "PNG"),
        "zero.jpg": b"",
        "huge_header.png": _png_header(100_000, 100_000),
        "wide_header.png": _png_header(2**31 - 1, 1),
        "zero_dims.png": _png_header(0, 0),
        "text.png": b"not an image at all\n",
        "png_named.jpg": bases["png"],
    }
    for i in range(14):
        ext = rng.choice(sorted(bases))
        data = bytearray(bases[ext])
        kind = rng.choice(["truncate", "flip", "magic", "garbage-tail"])
        if kind == "truncate":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "flip":
            for _ in range(rng.randrange(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "magic":
            other = bases[rng.choice(sorted(bases))]
            data[:8] = other[:8]
        else:
            data += bytes(rng.randrange(256) for _ in range(64))
        corpus[f"mut{i:02d}_{kind}.{ext}"] = bytes(data)
    return corpus


# -- corpus: recipes -------------------------------------------------------------------------------
def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, path + (i,))
    yield path


def _get(node, path):
    for part in path:
        node = node[part]
    return node


def mutate_recipe(rng: random.Random, base: dict) -> bytes:
    """One broken recipe: a data mutation (wrong type, unknown key, deletion) or a text/byte mutation."""
    data = copy.deepcopy(base)
    kind = rng.choice(["type", "type", "unknown-key", "delete", "anchor-bomb", "self-anchor", "deep",
                       "duplicate", "latin-1", "utf-16", "utf-16-bom", "truncate", "byte-flip", "big-number"])
    paths = [p for p in _leaves(data) if p]
    if kind in ("type", "big-number"):
        path = rng.choice(paths)
        value = rng.choice(WEIRD_VALUES) if kind == "type" else rng.choice([10**9, 2**63, -(2**63), 1e300])
        _get(data, path[:-1])[path[-1]] = value
    elif kind == "unknown-key":
        mappings = [p for p in _leaves(data) if isinstance(_get(data, p), dict)]
        _get(data, rng.choice(mappings))[rng.choice(["treshold", "indnet", "with_", "x", "use"])] = 1
    elif kind == "delete":
        path = rng.choice(paths)
        parent = _get(data, path[:-1])
        del parent[path[-1]]
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    if kind == "anchor-bomb":
        laughs = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
        text = laughs + text.replace("cutoff: 100", "cutoff: *i", 1)
    elif kind == "self-anchor":
        text = text.replace("cutoff: 100", "cutoff: &s [1, *s]", 1)
    elif kind == "deep":
        depth = rng.choice([60, 500, 5000])
        text = text.replace("cutoff: 100", "cutoff: " + "[" * depth + "]" * depth, 1)
    elif kind == "duplicate":
        text += "stages: []\n"
    elif kind == "truncate":
        text = text[: rng.randrange(1, len(text))]
    raw = text.encode("utf-8")
    if kind == "latin-1":
        raw = (text + "name: café\n").encode("latin-1", errors="replace")
    elif kind == "utf-16":
        raw = text.encode("utf-16-le")
    elif kind == "utf-16-bom":
        raw = codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    elif kind == "byte-flip":
        buffer = bytearray(raw)
        for _ in range(rng.randrange(1, 5)):
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        raw = bytes(buffer)
    return raw


# -- corpus: COCO ground truth ---------------------------------------------------------------------
def good_coco() -> dict:
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:10] = True
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 20},
                   {"id": 8, "file_name": "b.jpg", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 2, 8, 8],
                         "segmentation": mask_to_rle(mask), "area": 64, "iscrowd": 0},
                        {"id": 2, "image_id": 8, "category_id": 3, "bbox": [0, 0, 5, 5],
                         "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]}],
        "categories": [{"id": 3, "name": "cat"}],
    }


def mutate_coco(rng: random.Random) -> bytes:
    data = good_coco()
    kind = rng.choice(["type", "type", "delete", "rle", "polygon", "ids", "shape", "truncate", "bbox"])
    paths = [p for p in _leaves(data) if p]
    if kind == "type":
        path = rng.choice(paths)
        _get(data, path[:-1])[path[-1]] = rng.choice(WEIRD_VALUES + [float("inf")])
    elif kind == "delete":
        path = rng.choice(paths)
        del _get(data, path[:-1])[path[-1]]
    elif kind == "rle":
        counts = "".join(chr(rng.randrange(40, 120)) for _ in range(rng.randrange(0, 12)))
        data["annotations"][0]["segmentation"]["counts"] = rng.choice([counts, [rng.randrange(-5, 500)] * 3])
    elif kind == "polygon":
        data["annotations"][1]["segmentation"] = [[rng.uniform(-1e6, 1e6) for _ in range(rng.randrange(0, 9))]]
    elif kind == "ids":
        target = rng.choice([("image_id", 99), ("category_id", 42), ("id", 1)])
        data["annotations"][1][target[0]] = target[1]
    elif kind == "shape":
        key = rng.choice(["images", "categories", "annotations"])
        data[key] = rng.choice([{"id": 1}, "x", [[1, 2]], [None], 5])
    elif kind == "bbox":
        data["annotations"][0]["bbox"] = rng.choice([[1, 2, 3], [1, 2, 3, 4, 5], ["1", 2, 3, 4], [0, 0, -1, 2], "1 2 3 4"])
    text = json.dumps(data, allow_nan=True)
    if kind == "truncate":
        text = text[: rng.randrange(1, len(text))]
    return text.encode("utf-8")


# -- checks ----------------------------------------------------------------------------------------
def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _check_invariants(result_code: int, stderr: str, root: Path, before: set[Path], out: Path, case: str) -> None:
    assert result_code in ALLOWED_EXIT, f"{case}: exit {result_code}\n{stderr}"
    assert "Traceback" not in stderr, f"{case}:\n{stderr}"
    new = _snapshot(root) - before
    escaped = [p for p in new if p != out and out not in p.parents]
    assert not escaped, f"{case}: wrote outside OUT: {escaped}"
    partial = [p for p in new if p.name.endswith(".part")]
    assert not partial, f"{case}: partial files left: {partial}"


@pytest.fixture
def cli(test_stages, monkeypatch, tmp_path):
    """The `recognize` group, in-process, with the test stages; offline with an empty cache."""
    from recognize.cli import build_cli

    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    group = build_cli()

    def invoke(*args: object):
        result = CliRunner().invoke(group, [str(a) for a in args])
        stderr = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            stderr += "Traceback (escaped the CLI):\n" + "".join(traceback.format_exception(result.exception))
        return result.exit_code, stderr

    return invoke


def _small_images(folder: Path, rng: random.Random) -> None:
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        array = np.random.default_rng(rng.randrange(2**32)).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / name)


# -- the tests -------------------------------------------------------------------------------------
def test_broken_recipes_through_run(cli, tmp_path):
    rng = random.Random(SEED)
    images = tmp_path / "images"
    _small_images(images, rng)
    codes = []
    for i in range(40):
        case = tmp_path / f"case{i:02d}"
        case.mkdir()
        recipe = case / "r.yaml"
        recipe.write_bytes(mutate_recipe(rng, TINY))
        out = case / "out"
        before = _snapshot(tmp_path)
        code, stderr = cli("run", recipe, images, "-o", out, "--quiet")
        _check_invariants(code, stderr, tmp_path, before, out, f"recipe case {i}: {recipe.read_bytes()[:300]!r}")
        codes.append(code)
    assert 2 in codes and 0 in codes  # the corpus holds both refused and harmless mutations


def test_mutations_of_the_shipped_recipes_load_or_fail_in_one_line(test_stages):
    """recipes/*.yaml and the test recipes, mutated: loading and building the pipeline (what `run`
    does before any work) either succeeds or is one RecipeError line; models are not loaded."""
    rng = random.Random(SEED + 1)
    bases = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted((REPO / "recipes").glob("*.yaml"))]
    bases.append(TINY)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        outcomes = []
        for i in range(120):
            base = bases[i % len(bases)]
            if "cutoff: 100" not in yaml.safe_dump(base):  # give the text mutations an anchor point
                base = copy.deepcopy(base)
                base["stages"][0].setdefault("with", {})
            path.write_bytes(mutate_recipe(rng, base))
            try:
                Pipeline.from_recipe(load_recipe(path))
                outcomes.append("ok")
            except RecipeError as exc:
                assert "\n" not in str(exc), str(exc)
                outcomes.append("refused")
        assert "refused" in outcomes


def test_broken_coco_through_eval_regions(cli, tmp_path):
    rng = random.Random(SEED + 2)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for name, box in (("a", (2, 2, 10, 10)), ("b", (0, 0, 5, 5))):
        mask = np.zeros((20, 20), bool)
        mask[box[1]:box[3], box[0]:box[2]] = True
        (predictions / f"{name}.json").write_text(Frame(source=f"{name}.jpg", width=20, height=20, regions=[
            Region(tag="cat", box=box, score=0.9, mask=mask)]).to_json())
    codes = []
    for i in range(60):
        case = tmp_path / f"coco{i:02d}"
        case.mkdir()
        gt = case / "gt.json"
        gt.write_bytes(mutate_coco(rng))
        out = case / "out"
        before = _snapshot(tmp_path)
        code, stderr = cli("eval", "regions", "--predictions", predictions, "--annotations", gt, "-o", out, "--quiet")
        _check_invariants(code, stderr, tmp_path, before, out, f"coco case {i}: {gt.read_bytes()[:400]!r}")
        codes.append(code)
    assert 2 in codes and 0 in codes


@pytest.mark.subprocess
def test_broken_images_through_a_real_run(tmp_path):
    """One real process over the whole broken-image corpus: each bad file is one reported failure."""
    rng = random.Random(SEED + 3)
    images = tmp_path / "images"
    images.mkdir()
    corpus = image_corpus(rng)
    for name, data in corpus.items():
        (images / name).write_bytes(data)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY, sort_keys=False))
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(images), "-o", str(out)],
                            check=False, capture_output=True, text=True, timeout=300,
                            env=cli_env(RECOGNIZE_HOME=str(tmp_path / "cache"), RECOGNIZE_OFFLINE="1"))
    _check_invariants(result.returncode, result.stderr, tmp_path, before, out, "image corpus")
    assert result.returncode == 1, result.stderr  # some images are fine, the broken ones fail
    for name in ("zero.jpg", "huge_header.png", "text.png"):
        assert name in result.stderr
    assert "limit of 178956970 pixels" in result.stderr
    results = {path.name.split(".")[0] for path in out.rglob("*.json")}  # wherever the layout puts them
    assert {"good", "cmyk", "sixteen", "png_named"} <= results
