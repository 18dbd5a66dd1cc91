"""Inputs at scale: list files, JSONL/Parquet manifests and URLs (an HTTP server on loopback), through
`run_to_folder`, resumed by identity."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest

from recognize.errors import ImageError, InputError
from recognize.images import expand_inputs, load_image
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder
from recognize.sources import is_url, url_name


def make_pipeline(test_stages):
    return Pipeline([test_stages.Brightness(), test_stages.CenterBox()], batch_size=2)


@pytest.fixture
def http_root(image_folder):
    """`image_folder` served over HTTP on 127.0.0.1 (a real server, a real socket)."""
    handler = functools.partial(_QuietHandler, directory=str(image_folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


def test_urls_are_told_from_paths():
    assert is_url("http://h/a.jpg") and is_url("s3://bucket/k.png") and not is_url("/tmp/a.jpg")
    assert not is_url("file:///tmp/a.jpg") and not is_url("C:\\x.jpg")
    assert url_name("https://example.com/a/b.jpg?x=1") == ("example.com", "a", "b.jpg")


def test_an_image_is_read_over_http(http_root):
    assert load_image(f"{http_root}/white.png").shape == (40, 60, 3)
    with pytest.raises(ImageError, match="missing.png"):
        load_image(f"{http_root}/missing.png")


def test_fsspec_schemes_other_than_http_read_too(image_folder):
    fsspec = pytest.importorskip("fsspec")
    with fsspec.open("memory://bucket/white.png", "wb") as handle:  # fsspec's in-memory filesystem
        handle.write((image_folder / "white.png").read_bytes())
    assert load_image("memory://bucket/white.png").shape == (40, 60, 3)
    local = f"file://{image_folder / 'white.png'}"
    assert expand_inputs([local]) == [(image_folder / "white.png", "white.png")]


def test_list_file_mixes_relative_paths_and_urls(test_stages, image_folder, http_root, tmp_path):
    listing = image_folder / "list.txt"
    listing.write_text(f"# two local files and one URL\nwhite.png\n\nsub/noise.png\n{http_root}/black.jpg\n")
    items = expand_inputs([listing])
    assert [str(p) for p, _ in items] == [str(image_folder / "white.png"), str(image_folder / "sub" / "noise.png"),
                                          f"{http_root}/black.jpg"]
    out = tmp_path / "out"
    summary = run_to_folder(make_pipeline(test_stages), [listing], out, quiet=True)
    assert (summary.processed, summary.failed) == (3, 0)
    frames = sorted(p.name for p in (out / "frames").rglob("*.json"))
    assert frames == ["black.jpg.json", "noise.png.json", "white.png.json"]
    from_url = json.loads(next((out / "frames").rglob("black.jpg.json")).read_text())
    assert (from_url["width"], from_url["height"], from_url["source"]) == (30, 50, f"{http_root}/black.jpg")
    again = run_to_folder(make_pipeline(test_stages), [listing], out, quiet=True)  # resume by identity
    assert (again.processed, again.skipped) == (0, 3)


def test_jsonl_manifest_names_its_outputs_and_a_missing_url_fails_alone(test_stages, image_folder, http_root,
                                                                        tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"url": f"{http_root}/white.png", "name": "a/one.png"}, {"path": str(image_folder / "black.jpg")},
            {"source": f"{http_root}/gone.png"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    summary = run_to_folder(make_pipeline(test_stages), [manifest], out, quiet=True)
    assert (summary.processed, summary.failed) == (2, 1)
    assert "gone.png" in summary.failures[0]["error"] and "\n" not in summary.failures[0]["error"]
    assert (out / "frames" / "a" / "one.png.json").is_file() and (out / "frames" / "black.jpg.json").is_file()


def test_parquet_manifest(test_stages, image_folder, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    manifest = tmp_path / "images.parquet"
    pq.write_table(pa.table({"path": ["white.png", "sub/noise.png"], "name": ["w.png", None]}),
                   image_folder / "images.parquet")
    manifest = image_folder / "images.parquet"
    assert [name for _, name in expand_inputs([manifest])] == ["w.png", "noise.png"]


def test_bad_list_and_manifest_are_one_line_input_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="names no image"):
        expand_inputs([tmp_path / "empty.txt"])
    (tmp_path / "m.jsonl").write_text('{"file": "x.png"}\n')
    with pytest.raises(InputError, match="row 1 has no path, url, source"):
        expand_inputs([tmp_path / "m.jsonl"])
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read the manifest"):
        expand_inputs([tmp_path / "bad.parquet"])
