"""Driver registry: the built-in list plus the `courtyard.drivers` entry-point group.

A driver spec that cannot work (a device kind the event schema does not know, an unknown
shape, a config model that is not a `DeviceConfig`) never stops the gateway: it is logged
and remembered in `problems()`, `courtyard validate` reports the devices that use it, and
`Gateway.start` skips those devices (counted) while the others run. A spec whose config
model is unusable cannot even parse its devices, so it is left out of `drivers()`.
"""

from __future__ import annotations

import importlib
import logging
import os
from functools import cache
from importlib.metadata import entry_points
from typing import get_args

from drivers import BUILTIN
from gateway.driver import DeviceConfig, DriverSpec
from schemas.common import DeviceKind

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "courtyard.drivers"
DISABLE_AUTOLOAD_ENV = "COURTYARD_DISABLE_PLUGIN_AUTOLOAD"

_problems: dict[str, str] = {}


def _load(ref: str) -> DriverSpec:
    module_name, _, attr = ref.partition(":")
    spec = getattr(importlib.import_module(module_name), attr or "DRIVER")
    if not isinstance(spec, DriverSpec):
        raise TypeError(f"{ref} is not a DriverSpec")
    return spec


def unusable_reason(spec: DriverSpec) -> str | None:
    """Why devices of this driver cannot run, or None."""
    kinds = get_args(DeviceKind)
    if spec.kind not in kinds:
        return f"device kind {spec.kind!r} is not one of {', '.join(kinds)}"
    if spec.shape not in ("polling", "push"):
        return f"shape {spec.shape!r} is neither polling nor push"
    if not (isinstance(spec.config, type) and issubclass(spec.config, DeviceConfig)):
        return f"config {spec.config!r} is not a DeviceConfig model"
    if not (callable(spec.factory) or (isinstance(spec.factory, str) and ":" in spec.factory)):
        return f"factory {spec.factory!r} is neither callable nor 'module:Class'"
    return None


def _admit(found: dict[str, DriverSpec], spec: DriverSpec, origin: str) -> None:
    reason = unusable_reason(spec)
    if reason is not None:
        _problems[spec.name] = f"{origin}: {reason}"
        log.error("driver %s (%s) is unusable: %s; its devices will be skipped", spec.name, origin, reason)
        if not (isinstance(spec.config, type) and issubclass(spec.config, DeviceConfig)):
            return  # its devices cannot even be parsed
    found[spec.name] = spec


def register(spec: DriverSpec, origin: str) -> None:
    """Add a driver at run time (tests, embedding); an unusable one is recorded, never raised."""
    _admit(drivers(), spec, origin)
    _model_changed()


def unregister(name: str) -> None:
    """Forget a driver registered with `register` (tests)."""
    drivers().pop(name, None)
    _problems.pop(name, None)
    _model_changed()


def _model_changed() -> None:
    from gateway.config import config_model

    config_model.cache_clear()


def problems() -> dict[str, str]:
    """Unusable drivers (and plugins that failed to load), by name: `origin: reason`."""
    drivers()
    return dict(_problems)


@cache
def drivers() -> dict[str, DriverSpec]:
    """All known drivers by name; built-ins win over a plugin of the same name."""
    found: dict[str, DriverSpec] = {}
    for ref in BUILTIN:
        spec = _load(ref)
        found[spec.name] = spec
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            origin = f"plugin {ep.name} ({ep.value})"
            try:
                spec = ep.load()
            except Exception as exc:  # a broken plugin must not take the gateway down
                log.exception("driver plugin %s failed to load", ep.name)
                _problems[ep.name] = f"{origin}: failed to load: {type(exc).__name__}: {exc}"
                continue
            if not isinstance(spec, DriverSpec):
                log.error("driver plugin %s is not a DriverSpec", ep.name)
                _problems[ep.name] = f"{origin}: not a DriverSpec"
            elif spec.name in found:
                log.warning("driver plugin %s ignored: name %r already registered", ep.value, spec.name)
            else:
                _admit(found, spec, origin)
    return found


def get(name: str) -> DriverSpec:
    """The driver called `name`; KeyError lists the known ones."""
    known = drivers()
    if name not in known:
        raise KeyError(f"unknown driver {name!r}; known: {', '.join(sorted(known))}")
    return known[name]
