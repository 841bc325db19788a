"""Driver registry: the built-in list plus the `courtyard.drivers` entry-point group."""

from __future__ import annotations

import importlib
import logging
import os
from functools import cache
from importlib.metadata import entry_points

from drivers import BUILTIN
from gateway.driver import DriverSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "courtyard.drivers"
DISABLE_AUTOLOAD_ENV = "COURTYARD_DISABLE_PLUGIN_AUTOLOAD"


def _load(ref: str) -> DriverSpec:
    module_name, _, attr = ref.partition(":")
    spec = getattr(importlib.import_module(module_name), attr or "DRIVER")
    if not isinstance(spec, DriverSpec):
        raise TypeError(f"{ref} is not a DriverSpec")
    return spec


@cache
def drivers() -> dict[str, DriverSpec]:
    """All known drivers by name; built-ins win over a plugin of the same name."""
    found: dict[str, DriverSpec] = {}
    for ref in BUILTIN:
        spec = _load(ref)
        found[spec.name] = spec
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                spec = ep.load()
            except Exception:  # a broken plugin must not take the gateway down
                log.exception("driver plugin %s failed to load", ep.name)
                continue
            if not isinstance(spec, DriverSpec):
                log.error("driver plugin %s is not a DriverSpec", ep.name)
            elif spec.name in found:
                log.warning("driver plugin %s ignored: name %r already registered", ep.value, spec.name)
            else:
                found[spec.name] = spec
    return found


def get(name: str) -> DriverSpec:
    """The driver called `name`; KeyError lists the known ones."""
    known = drivers()
    if name not in known:
        raise KeyError(f"unknown driver {name!r}; known: {', '.join(sorted(known))}")
    return known[name]
