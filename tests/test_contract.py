"""The driver contract: module layering, the one ingest path, the one alarm tracker."""

from __future__ import annotations

import subprocess
import sys


def test_sinks_do_not_import_the_supervisor() -> None:
    """Back-off lives in gateway.backoff, so sinks no longer close runtime -> sinks -> supervisor -> runtime."""
    code = ("import sys, gateway.sinks.mqtt, gateway.sinks.influx; "
            "print(sorted(m for m in ('gateway.supervisor', 'gateway.runtime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
