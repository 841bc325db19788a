"""Raw-input recording for `courtyard run --record FILE` (JSON lines).

Each line: `{"t": <gateway time, ISO 8601 UTC>, "device": <id>, "channel": <name>, "data": <raw>}`.
The first line is a header `{"courtyard_recording": 1, "started": ...}`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any


class JsonlRecorder:
    """Appends raw driver inputs to a JSON-lines file, flushed line by line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        self._write({"courtyard_recording": 1, "started": datetime.now(UTC).isoformat()})

    def _write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
        self._fh.flush()

    def record(self, device: str, channel: str, data: Any) -> None:
        """Append one raw input."""
        self._write({"t": datetime.now(UTC).isoformat(), "device": device, "channel": channel, "data": data})

    def close(self) -> None:
        """Close the file."""
        self._fh.close()
