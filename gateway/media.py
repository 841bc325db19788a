"""A bounded folder of pictures (plate reads, camera snapshots): content-addressed names, oldest evicted.

Images never travel inline on MQTT; events carry a URI instead. Names are the SHA-256 of the
content, so a replay computes the same URI without writing, and a camera re-sending the same
picture costs no extra space.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict
from pathlib import Path

from gateway.files import FILE_MODE, make_private_dirs, write_private


def image_name(device: str, data: bytes, suffix: str = ".jpg") -> str:
    """Relative file name for an image: `<device>/<sha256 prefix><suffix>`."""
    return f"{device}/{hashlib.sha256(data).hexdigest()[:32]}{suffix}"


class MediaStore:
    """One per media folder; shared by every device configured with that folder."""

    def __init__(self, root: Path, max_bytes: int, *, uri_prefix: str | None = None) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes
        self.uri_prefix = uri_prefix.rstrip("/") if uri_prefix else None
        self._files: OrderedDict[str, int] = OrderedDict()  # relative name -> size, oldest first
        self._total = 0
        self._lock = asyncio.Lock()
        self.evicted = 0

    @property
    def total_bytes(self) -> int:
        """Bytes currently stored."""
        return self._total

    def uri(self, name: str) -> str:
        """The URI events carry for a stored image."""
        if self.uri_prefix:
            return f"{self.uri_prefix}/{name}"
        return (self.root / name).as_uri()

    def scan(self) -> None:
        """Index what is already on disk (after a restart), oldest first, and enforce the budget."""
        make_private_dirs(self.root)  # pictures of people and plates: 0700 folders, 0600 files
        found: list[tuple[float, str, int]] = []
        for path in self.root.rglob("*"):
            if path.is_file():
                stat = path.stat()
                if stat.st_mode & 0o777 != FILE_MODE:
                    path.chmod(FILE_MODE)
                found.append((stat.st_mtime, path.relative_to(self.root).as_posix(), stat.st_size))
        for _, name, size in sorted(found):
            self._files[name] = size
            self._total += size
        self._evict(0)

    def _evict(self, incoming: int) -> None:
        while self._files and self._total + incoming > self.max_bytes:
            name, size = self._files.popitem(last=False)
            self._total -= size
            self.evicted += 1
            (self.root / name).unlink(missing_ok=True)

    def _write(self, name: str, data: bytes) -> None:
        path = self.root / name
        make_private_dirs(path.parent)
        tmp = path.with_suffix(".tmp")
        write_private(tmp, data)
        os.replace(tmp, path)

    async def store(self, name: str, data: bytes) -> str:
        """Write one picture (idempotent by name) and return its URI."""
        async with self._lock:
            if name in self._files:
                self._files.move_to_end(name)
                return self.uri(name)
            if len(data) > self.max_bytes:
                raise ValueError(f"image of {len(data)} bytes exceeds the media budget of {self.max_bytes}")
            self._evict(len(data))
            await asyncio.to_thread(self._write, name, data)
            self._files[name] = len(data)
            self._total += len(data)
        return self.uri(name)

    async def aclose(self) -> None:
        """Nothing to release; present so the runtime can close shared objects uniformly."""
