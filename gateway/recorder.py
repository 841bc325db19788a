"""Raw-input recording for `courtyard run --record FILE` (JSON lines; format in gateway/replay.py)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import IO, Any


class JsonlRecorder:
    """Writes a header line, then one line per raw driver input, flushed as it goes."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # 0600, also when the file already existed with a wider mode (open() keeps it): raw
        # inputs hold plates and frames, and the header the credential hash key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        self._fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        self.lines = 0
        self._write(header)

    def _write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str) + "\n")
        self._fh.flush()

    def record(self, device: str, channel: str, data: Any, when: datetime) -> None:
        """Append one raw input received at `when`."""
        self._write({"t": when.isoformat(), "device": device, "channel": channel, "data": data})
        self.lines += 1

    def close(self) -> None:
        """Close the file."""
        self._fh.close()
