"""A minimal PEP 517 build backend: the plugin installs with nothing but pip, offline.

A real plugin would name setuptools or hatchling in `[build-system]`; this one stands in so
that `pip install --no-build-isolation examples/plugin` works in a venv without `wheel`
(setuptools before 70.1 cannot build wheels without it). It packs `courtyard_pump/` and the
metadata and entry points declared in pyproject.toml, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "courtyard_pump"


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        project: dict[str, Any] = tomllib.load(fh)["project"]
    return project


def _dist_files() -> tuple[str, dict[str, str]]:
    p = _project()
    dist = f"{p['name'].replace('-', '_')}-{p['version']}"
    metadata = "".join([
        "Metadata-Version: 2.1\n", f"Name: {p['name']}\n", f"Version: {p['version']}\n",
        f"Summary: {p['description']}\n", f"Requires-Python: {p['requires-python']}\n",
        *(f"Requires-Dist: {d}\n" for d in p.get("dependencies", [])),
    ])
    groups = p.get("entry-points", {})
    entry_points = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                           for g, eps in groups.items())
    wheel = "Wheel-Version: 1.0\nGenerator: pump_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    return dist, {"METADATA": metadata, "WHEEL": wheel, "entry_points.txt": entry_points}


def build_wheel(wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None) -> str:
    dist, info = _dist_files()
    name = f"{dist}-py3-none-any.whl"
    files = {f"{PACKAGE}/{f.name}": f.read_bytes() for f in sorted((ROOT / PACKAGE).glob("*.py"))}
    files |= {f"{dist}.dist-info/{k}": v.encode() for k, v in info.items()}
    record = []
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{dist}.dist-info/RECORD,,")
        zf.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return name


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []
