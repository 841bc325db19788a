"""Scenarios: site layouts plus timelines of behaviour and faults, played over real protocols.

`ADAPTERS` (device kind -> "module:KindAdapter class") comes from the driver registry
(`DriverSpec.scenario_adapter`), so a plugin's kind can take part in scenarios.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "ADAPTERS":
        from gateway.registry import scenario_adapters

        return scenario_adapters()
    raise AttributeError(name)
