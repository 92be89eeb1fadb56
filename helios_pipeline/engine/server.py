"""A loopback-only static file server for local compositions.

ES modules do not load from file:// URLs, so a local composition is served over HTTP from
127.0.0.1 on a free port, and only its own folder is reachable.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

_RANGE = re.compile(r"bytes=(?P<first>\d*)-(?P<last>\d*)")


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 - extends the class attribute on purpose
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".svg": "image/svg+xml",
    }

    _range: tuple[int, int] | None = None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def send_head(self):  # type: ignore[no-untyped-def]
        """Answer ``Range: bytes=a-b`` with 206: media elements can only seek in ranged resources."""
        self._range = None
        header = self.headers.get("Range", "")
        match = _RANGE.fullmatch(header.strip())
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first = int(match["first"]) if match["first"] else max(0, size - int(match["last"] or 0))
        last = int(match["last"]) if match["first"] and match["last"] else size - 1
        last = min(last, size - 1)
        if first >= size or first > last:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        handle = path.open("rb")
        handle.seek(first)
        self._range = (first, last)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        return handle

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        try:
            if self._range is None:
                shutil.copyfileobj(source, outputfile)
                return
            remaining = self._range[1] - self._range[0] + 1
            while remaining > 0:
                block = source.read(min(1 << 16, remaining))
                if not block:
                    break
                outputfile.write(block)
                remaining -= len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser dropped a request it no longer needs (a media element seeking)

    def log_message(self, format: str, *args: object) -> None:
        pass


SHUTDOWN_POLL_S = 0.02
"""How often the serving loop looks for ``shutdown()``: every chunk and still waits that long at most when it
ends (with the standard 0.5 s, 0.25 s on average, on each chunk's critical path)."""


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 and yield its base URL (ending in /)."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}, name="helios-static", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def composition_url(composition: str) -> Iterator[str]:
    """Yield a URL for ``composition``: remote URLs as they are, local files through serve_folder."""
    if composition.startswith(("http://", "https://")):
        yield composition
        return
    page = Path(composition)
    with serve_folder(page.parent) as base:
        yield base + quote(page.name)
