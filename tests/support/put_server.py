"""A loopback HTTP server that stores what is PUT and serves it back (GET, HEAD): a writable
"bucket" for `-o http://...` tests, in a thread of the test process (stdlib only)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path


class PutHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD from `directory` (SimpleHTTPRequestHandler); PUT stores the body (plain or chunked)
    at the path, replacing the file whole, and logs the path in `server.puts`; a path containing
    `refuse` answers 403 (an upload the server denies)."""

    def do_PUT(self) -> None:
        target = Path(self.translate_path(self.path))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "refuse" in self.path:
            self.send_error(403, "uploads under this name are forbidden")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.upload")
        part.write_bytes(bytes(body))
        os.replace(part, target)
        self.server.puts.append(self.path)  # type: ignore[attr-defined]
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@contextlib.contextmanager
def put_server(root: Path) -> Iterator[http.server.ThreadingHTTPServer]:
    """Serve `root` on 127.0.0.1; yields the server, with `.url` (its base URL) and `.puts` (the
    paths PUT so far, in order)."""
    handler = functools.partial(PutHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    server.puts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
