"""The weights manager against a real HTTP server on 127.0.0.1 (Range, cut connections, 404)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from recognize import hub
from recognize.errors import ModelFileError, RecognizeError
from recognize.hub import ModelCard, ModelFile

DATA = random.Random(0).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-`; can cut, stall or ignore Range on request."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.delay:
            time.sleep(srv.delay)
        cut = srv.cut_after.pop(self.path, None)
        if cut is not None:  # send part of the body, then drop the connection
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            if srv.stall:
                srv.unstall.wait(srv.stall)
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.requests, srv.cut_after = {"/blob.bin": DATA}, [], {}
    srv.ignore_range, srv.delay, srv.stall = False, 0.0, 0.0
    srv.unstall = threading.Event()  # ends a stall early (at teardown)
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.unstall.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RECOGNIZE_OFFLINE", raising=False)
    return tmp_path / "home"


def card_for(server, sha256: str | None = SHA, size: int | None = len(DATA), path: str = "/blob.bin") -> ModelCard:
    return ModelCard("tiny", (ModelFile("blob.bin", server.url + path, sha256=sha256, size=size),))


def assert_one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_fresh_download_is_verified_and_cached(server, home):
    card = card_for(server)
    path = hub.ensure_file(card, "blob.bin", progress=False)
    assert path == home / "models" / "tiny" / "blob.bin"
    assert path.read_bytes() == DATA
    assert not (path.parent / "blob.bin.part").exists()
    assert json.loads((path.parent / "blob.bin.verified").read_text())["sha256"] == SHA
    assert server.requests == [("/blob.bin", None)]
    assert hub.ensure_file(card, "blob.bin") == path  # second call: no new request
    assert len(server.requests) == 1
    assert hub.file_state(card, "blob.bin") == "present"


def test_interrupted_transfer_resumes_with_range_in_the_same_call(server):
    server.cut_after["/blob.bin"] = 100_000
    path = hub.ensure_file(card_for(server), "blob.bin", progress=False)
    assert path.read_bytes() == DATA
    assert server.requests == [("/blob.bin", None), ("/blob.bin", "bytes=100000-")]


def test_interrupted_download_keeps_part_and_next_run_resumes(server, home):
    card = card_for(server)
    server.cut_after["/blob.bin"] = 123_456
    with pytest.raises(ModelFileError) as info:
        hub.download(card, progress=False, attempts=1)
    text = assert_one_line(info.value)
    assert "interrupted" in text and "resume" in text
    part = home / "models" / "tiny" / "blob.bin.part"
    assert part.stat().st_size == 123_456
    assert not (home / "models" / "tiny" / "blob.bin").exists()
    assert hub.file_state(card, "blob.bin") == "partial"

    # A fresh process has no running hash: the part is re-hashed and the rest fetched with Range.
    [path] = hub.download(card, progress=False)
    assert path.read_bytes() == DATA
    assert server.requests[-1] == ("/blob.bin", "bytes=123456-")


def test_unknown_size_still_detects_a_cut_connection(server):
    server.cut_after["/blob.bin"] = 5_000
    card = card_for(server, sha256=None, size=None)
    path = hub.ensure_file(card, "blob.bin", progress=False)
    assert path.read_bytes() == DATA
    assert server.requests[-1] == ("/blob.bin", "bytes=5000-")


def test_server_ignoring_range_restarts_cleanly(server):
    server.cut_after["/blob.bin"] = 50_000
    server.ignore_range = True
    path = hub.ensure_file(card_for(server), "blob.bin", progress=False)
    assert path.read_bytes() == DATA
    assert len(server.requests) == 2


def test_complete_part_file_is_finished_without_refetching(server, home):
    target = home / "models" / "tiny" / "blob.bin"
    target.parent.mkdir(parents=True)
    (target.parent / "blob.bin.part").write_bytes(DATA)  # killed just before the rename
    assert hub.ensure_file(card_for(server), "blob.bin", progress=False).read_bytes() == DATA
    assert server.requests == [("/blob.bin", f"bytes={len(DATA)}-")]  # answered 416, nothing re-sent


def test_checksum_mismatch_leaves_nothing_in_place(server, home):
    wrong = "0" * 64
    with pytest.raises(ModelFileError) as info:
        hub.ensure_file(card_for(server, sha256=wrong), "blob.bin", progress=False)
    text = assert_one_line(info.value)
    assert "corrupt" in text and wrong in text and SHA in text and server.url + "/blob.bin" in text
    folder = home / "models" / "tiny"
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == []


def test_size_mismatch_is_reported(server):
    with pytest.raises(ModelFileError, match="got 300000 bytes, expected 299999"):
        hub.ensure_file(card_for(server, sha256=None, size=len(DATA) - 1), "blob.bin", progress=False)


def test_404_names_file_url_and_target(server, home):
    card = card_for(server, path="/missing.bin")
    with pytest.raises(ModelFileError) as info:
        hub.ensure_file(card, "blob.bin", progress=False)
    text = assert_one_line(info.value)
    assert "blob.bin" in text and "HTTP 404" in text and server.url + "/missing.bin" in text
    assert str(home / "models" / "tiny" / "blob.bin") in text


def test_unreachable_server_is_one_line(home):
    import socket

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    card = ModelCard("tiny", (ModelFile("blob.bin", f"http://127.0.0.1:{port}/blob.bin"),))
    with pytest.raises(ModelFileError) as info:
        hub.ensure_file(card, "blob.bin", progress=False)
    assert "put it at" in assert_one_line(info.value)


def test_stalled_transfer_times_out(server):
    server.cut_after["/blob.bin"] = 1_000
    server.stall = 600.0  # the server holds the connection open until teardown: only our timeout ends it
    with pytest.raises(ModelFileError, match="interrupted .*timed out"):
        hub.download(card_for(server), progress=False, timeout=0.3, attempts=1)


def test_offline_error_names_the_target_path(server, home, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    card = card_for(server)
    for call in (lambda: hub.ensure_file(card, "blob.bin"), lambda: hub.download(card)):
        with pytest.raises(ModelFileError) as info:
            call()
        text = assert_one_line(info.value)
        assert "RECOGNIZE_OFFLINE=1" in text and server.url + "/blob.bin" in text
        assert str(home / "models" / "tiny" / "blob.bin") in text
    assert server.requests == []


def test_download_false_says_how_to_get_it(server):
    with pytest.raises(ModelFileError, match=r"recognize models download tiny"):
        hub.ensure_file(card_for(server), "blob.bin", download=False)
    assert server.requests == []


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "rh"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "rh"
    monkeypatch.delenv("RECOGNIZE_HOME")
    assert hub.cache_dir() == tmp_path / "xdg" / "recognize"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == tmp_path / "user" / ".cache" / "recognize"


def test_sidecar_spares_rehashing_until_the_file_changes(server, home, monkeypatch):
    card = card_for(server, size=None)
    target = hub.file_path(card, "blob.bin")
    target.parent.mkdir(parents=True)
    target.write_bytes(DATA)  # put there by hand
    calls = []
    real = hub._hash_file
    monkeypatch.setattr(hub, "_hash_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))

    assert hub.ensure_file(card, "blob.bin") == target
    assert hub.ensure_file(card, "blob.bin") == target
    assert len(calls) == 1  # hashed once, then trusted by size + mtime

    target.write_bytes(DATA[:-1] + b"\x00")  # same size, new content and mtime
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ModelFileError, match="has sha256") as info:
        hub.ensure_file(card, "blob.bin")
    assert len(calls) == 2 and "recognize models download tiny" in assert_one_line(info.value)
    assert server.requests == []


def test_download_replaces_a_corrupt_cached_file(server):
    card = card_for(server)
    target = hub.file_path(card, "blob.bin")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="is 4 bytes, expected 300000"):
        hub.ensure_file(card, "blob.bin")
    assert hub.download(card, progress=False) == [target]
    assert target.read_bytes() == DATA


def test_two_concurrent_downloads_fetch_once(server):
    server.delay = 0.3
    card = card_for(server)
    results, errors = [], []

    def worker() -> None:
        try:
            results.extend(hub.download(card, progress=False))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == DATA
    assert len(server.requests) == 1


def test_resolve_path(server, tmp_path, monkeypatch):
    card = card_for(server)
    local = tmp_path / "mine.bin"
    local.write_bytes(b"x")
    assert hub.resolve_path(str(local), card, "blob.bin") == local
    with pytest.raises(ModelFileError) as info:
        hub.resolve_path(str(tmp_path / "nope.bin"), card, "blob.bin")
    assert "does not exist" in assert_one_line(info.value) and "nope.bin" in str(info.value)
    with pytest.raises(ModelFileError, match="is a directory"):
        hub.resolve_path(tmp_path, card, "blob.bin")
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    with pytest.raises(ModelFileError, match="RECOGNIZE_OFFLINE"):
        hub.resolve_path(None, card, "blob.bin")  # None means: the cache


def test_cards_and_lookup_errors(server):
    card = card_for(server)
    with pytest.raises(ModelFileError, match="has no file 'other.bin'; its files: blob.bin"):
        hub.file_path(card, "other.bin")
    with pytest.raises(RecognizeError, match=r"unknown model 'no-such-model'; known models: .*ram-tag-lists"):
        hub.get_card("no-such-model")
    assert hub.get_card("ram-tag-lists").size == 41904 + 44181 + 22016 + 29062
    with pytest.raises(ValueError):
        ModelFile("../escape.bin", "http://x")
    with pytest.raises(ValueError):
        ModelFile("a.bin", "http://x", sha256="abc")
    with pytest.raises(ValueError):
        ModelCard("bad/name", ())
    with pytest.raises(ValueError):
        ModelCard("dup", (ModelFile("a", "http://x"), ModelFile("a", "http://y")))
