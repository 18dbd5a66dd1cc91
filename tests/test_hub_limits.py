"""Downloads end: a total deadline and a minimum rate, against a server on 127.0.0.1 that trickles
bytes (it never goes silent long enough for the per-read timeout). And cache settings that cannot
work are one line."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from recognize import hub
from recognize.errors import ModelFileError, SettingError
from recognize.hub import ModelCard, ModelFile

BODY = bytes(range(256)) * 40  # 10 KiB


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Sends BODY `server.step` bytes at a time, `server.pause` seconds apart; honours Range."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0])
        self.server.requests.append(start)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        self.send_header("Content-Length", str(len(BODY) - start))
        self.end_headers()
        try:
            for offset in range(start, len(BODY), self.server.step):
                if self.server.closing.is_set():
                    return
                self.wfile.write(BODY[offset : offset + self.server.step])
                self.wfile.flush()
                time.sleep(self.server.pause)
        except OSError:  # the client gave up: that is the point
            pass


@pytest.fixture
def trickle():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    srv.daemon_threads = True
    srv.step, srv.pause, srv.requests, srv.closing = 16, 0.02, [], threading.Event()
    card = ModelCard("slow", (ModelFile("blob.bin", f"http://127.0.0.1:{srv.server_address[1]}/blob.bin",
                                        size=len(BODY)),))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv, card
    srv.closing.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RECOGNIZE_OFFLINE", raising=False)
    for name in ("TIMEOUT", "DEADLINE", "MIN_RATE", "RATE_WINDOW"):
        monkeypatch.delenv(f"RECOGNIZE_DOWNLOAD_{name}", raising=False)
    return tmp_path / "home"


def test_trickling_server_is_cut_off_by_the_minimum_rate(trickle, monkeypatch, home):
    srv, card = trickle  # ~800 bytes/s: below the rate asked for
    monkeypatch.setenv("RECOGNIZE_DOWNLOAD_MIN_RATE", "5000")
    monkeypatch.setenv("RECOGNIZE_DOWNLOAD_RATE_WINDOW", "0.3")
    with pytest.raises(ModelFileError) as info:
        hub.download(card, progress=False, attempts=2)
    message = str(info.value)
    assert "slower than 5000 bytes/s for 0.3 s (RECOGNIZE_DOWNLOAD_MIN_RATE)" in message and "\n" not in message
    assert len(srv.requests) == 2 and srv.requests[1] > 0  # the second attempt resumed what arrived
    part = home / "models" / "slow" / "blob.bin.part"
    assert 0 < part.stat().st_size < len(BODY) and not (home / "models" / "slow" / "blob.bin").exists()


def test_total_deadline_stops_a_steady_but_endless_download(trickle, monkeypatch, home):
    srv, card = trickle
    monkeypatch.setenv("RECOGNIZE_DOWNLOAD_MIN_RATE", "0")  # the rate alone would let it go on
    monkeypatch.setenv("RECOGNIZE_DOWNLOAD_DEADLINE", "0.4")
    with pytest.raises(ModelFileError) as info:
        hub.ensure_file(card, "blob.bin", progress=False)
    message = str(info.value)
    assert "not finished after 0.4 s" in message and "RECOGNIZE_DOWNLOAD_DEADLINE" in message
    assert "resume" in message and "\n" not in message
    assert len(srv.requests) == 1  # a passed deadline is final: no second attempt


def test_a_fast_enough_download_finishes_under_the_limits(trickle, monkeypatch):
    srv, card = trickle
    srv.step, srv.pause = 4096, 0.0
    monkeypatch.setenv("RECOGNIZE_DOWNLOAD_MIN_RATE", "1000")
    monkeypatch.setenv("RECOGNIZE_DOWNLOAD_RATE_WINDOW", "0.05")
    [path] = hub.download(card, progress=False)
    assert path.read_bytes() == BODY


@pytest.mark.parametrize("name,value", [("DEADLINE", "soon"), ("MIN_RATE", "-1"), ("TIMEOUT", "0"),
                                        ("RATE_WINDOW", "inf")])
def test_bad_download_settings_are_one_line(trickle, monkeypatch, name, value):
    _, card = trickle
    monkeypatch.setenv(f"RECOGNIZE_DOWNLOAD_{name}", value)
    with pytest.raises(SettingError, match=rf"RECOGNIZE_DOWNLOAD_{name}='{value}': expected"):
        hub.download(card, progress=False)


def test_recognize_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("RECOGNIZE_HOME", str(blocker))
    with pytest.raises(SettingError, match=r"RECOGNIZE_HOME=.*file is a file; point it at a folder"):
        hub.cache_dir()
    monkeypatch.setenv("RECOGNIZE_HOME", str(blocker / "below"))
    with pytest.raises(SettingError, match=r"is under .*file, which is a file"):
        hub.cache_dir()


def test_unwritable_cache_folder_is_one_line(trickle, home):
    """The card's folder blocked by a file (as a read-only or full disk, an OS error on the cache)."""
    _, card = trickle
    (home / "models").mkdir(parents=True)
    (home / "models" / "slow").write_text("in the way")
    with pytest.raises(ModelFileError) as info:
        hub.download(card, progress=False)
    message = str(info.value)
    assert "cannot write blob.bin into the cache at" in message and "RECOGNIZE_HOME" in message
    assert "\n" not in message
