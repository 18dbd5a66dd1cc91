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
    at the path, replacing the file whole; a folder that is read-only answers 403."""

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
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
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}.upload")
            part.write_bytes(bytes(body))
            os.replace(part, target)
        except OSError:
            self.send_error(403, "cannot store this path")
            return
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@contextlib.contextmanager
def put_server(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1; yields the base URL."""
    handler = functools.partial(PutHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
