"""Private files: what the gateway stores (plates, images, history) is readable by its user only.

Folders it creates are 0700 and files 0600, whatever the umask; an existing file is forced
to 0600 when opened. Existing folders keep their mode (they may be shared, e.g. `.`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents, each 0700."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=DIR_MODE)


def make_private_file(path: Path) -> None:
    """Create `path` if missing, and force mode 0600 on it either way."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    os.chmod(path, FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` (replacing it), mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its old mode otherwise
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    finally:
        if fd >= 0:
            os.close(fd)
