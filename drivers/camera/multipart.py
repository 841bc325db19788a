"""Incremental, bounded splitter for the endless multipart streams cameras hold open.

Hikvision's alertStream (`multipart/mixed`) and Dahua's attach (`multipart/x-mixed-replace`)
never end: parts arrive as events happen. `MultipartSplitter.feed` takes bytes as they come
and returns the parts completed so far; it is sans-I/O, so property tests drive it directly.

Bounds: headers at most `max_header_bytes`; a body at most `max_part_bytes`. An oversized
part with a Content-Length is skipped byte-exactly; one without (an endless part) is skipped up
to the next delimiter while keeping only a delimiter's length of it. Either way one `Rejected`
is returned and the stream goes on. A stream whose delimiter is not the announced boundary
cannot be resynchronised: `CameraInputError("bad_boundary")`, and the transport reconnects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.camera.events import CameraInputError

_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s]{1,70}))', re.IGNORECASE)


def boundary_of(content_type: str) -> str | None:
    """The `boundary` parameter of a multipart Content-Type (None if absent)."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        return None
    value = match.group(1) or match.group(2)
    # Some firmwares announce the boundary with its leading dashes.
    return value[2:] if value.startswith("--") and len(value) > 2 else value


@dataclass(frozen=True, slots=True)
class Part:
    """One complete part: lower-cased headers and the body."""

    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The part's media type, lower case, without parameters."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A part that was skipped (too large, bad headers); counted, the stream goes on."""

    error: str
    detail: str


class MultipartSplitter:
    """Splits an endless multipart byte stream into parts, with bounded memory."""

    def __init__(self, boundary: str, *, max_part_bytes: int = 4 << 20, max_header_bytes: int = 8192) -> None:
        if not boundary:
            raise CameraInputError("bad_boundary", "empty boundary")
        self.delim = b"--" + boundary.encode("latin-1", "replace")
        self.max_part = max_part_bytes
        self.max_header = max_header_bytes
        self._buf = bytearray()
        self._state = "delim"  # delim | headers | body | skip_len | skip_delim | closed
        self._headers: dict[str, str] = {}
        self._want = 0
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes held right now (bounded by the part and header limits plus one read)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Part | Rejected]:
        """Add bytes; return what completed. Raises `CameraInputError` when the framing is lost."""
        if self.closed:
            return []
        self._buf += data
        out: list[Part | Rejected] = []
        while self._step(out):
            pass
        return out

    def _step(self, out: list[Part | Rejected]) -> bool:
        buf = self._buf
        if self._state == "delim":
            while buf[:2] == b"\r\n":
                del buf[:2]
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > len(self.delim) + 4 and not self.delim.startswith(bytes(buf[: len(self.delim)])):
                    raise CameraInputError("bad_boundary", f"expected {self.delim[:40]!r}, got {bytes(buf[:40])!r}")
                return False
            line = bytes(buf[:end]).rstrip(b" \t")
            if line == self.delim + b"--":
                self.closed = True
                self._state = "closed"
                buf.clear()
                return False
            if line != self.delim:
                raise CameraInputError("bad_boundary", f"expected {self.delim[:40]!r}, got {line[:40]!r}")
            del buf[: end + 2]
            self._state = "headers"
            return True
        if self._state == "headers":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # A part with no headers at all starts straight with the blank line.
                if buf[:2] == b"\r\n" and len(buf) >= 2:
                    del buf[:2]
                    self._headers = {}
                    return self._begin_body(out)
                if len(buf) > self.max_header:
                    raise CameraInputError("header_too_large", f"part headers over {self.max_header} bytes")
                return False
            if end > self.max_header:
                raise CameraInputError("header_too_large", f"part headers over {self.max_header} bytes")
            headers: dict[str, str] = {}
            for raw in bytes(buf[:end]).split(b"\r\n"):
                name, sep, value = raw.decode("latin-1").partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            del buf[: end + 4]
            self._headers = headers
            return self._begin_body(out)
        if self._state == "body":
            if self._want >= 0:
                if len(buf) < self._want:
                    return False
                body = bytes(buf[: self._want])
                del buf[: self._want]
                out.append(Part(self._headers, body))
                self._state = "delim"
                return True
            end = buf.find(b"\r\n" + self.delim)
            if end < 0:
                if len(buf) > self.max_part + len(self.delim) + 2:
                    out.append(Rejected("part_too_large", f"part without length over {self.max_part} bytes"))
                    del buf[: len(buf) - len(self.delim) - 2]
                    self._state = "skip_delim"
                return False
            body = bytes(buf[:end])
            del buf[: end + 2]
            if len(body) > self.max_part:
                out.append(Rejected("part_too_large", f"part of {len(body)} bytes over {self.max_part}"))
            else:
                out.append(Part(self._headers, body))
            self._state = "delim"
            return True
        if self._state == "skip_len":
            take = min(self._want, len(buf))
            del buf[:take]
            self._want -= take
            if self._want:
                return False
            self._state = "delim"
            return True
        if self._state == "skip_delim":
            end = buf.find(b"\r\n" + self.delim)
            if end < 0:
                keep = len(self.delim) + 2
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return False
            del buf[: end + 2]
            self._state = "delim"
            return True
        return False

    def _begin_body(self, out: list[Part | Rejected]) -> bool:
        length = self._headers.get("content-length")
        if length is None:
            self._want = -1
            self._state = "body"
            return True
        try:
            want = int(length)
            if want < 0:
                raise ValueError(length)
        except ValueError:
            out.append(Rejected("bad_content_length", f"Content-Length {length[:40]!r}"))
            self._want = -1
            self._state = "skip_delim"
            return True
        if want > self.max_part:
            out.append(Rejected("part_too_large", f"Content-Length {want} over {self.max_part}"))
            self._want = want
            self._state = "skip_len"
            return True
        self._want = want
        self._state = "body"
        return True
