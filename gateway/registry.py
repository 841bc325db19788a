"""Driver registry: the built-in list plus the `courtyard.drivers` entry-point group.

Everything kind-specific the gateway needs is built from here, not listed by hand: the
config model (`gateway.config.config_model`), the device kinds and the event envelope with
its payload union (`event_model`), the JSON Schemas, `courtyard simulate`'s simulators and
the scenario adapters. A plugin that declares a new kind and its payload model therefore
extends all of them; a plugin spec the gateway cannot use is refused, by name (`rejected`).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from functools import cache
from importlib.metadata import entry_points
from typing import Any, get_args

from pydantic import BaseModel

from drivers import BUILTIN
from gateway.driver import DeviceConfig, DriverSpec
from schemas.common import DeviceRef
from schemas.event import Event, build_event_model, payload_kind

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "courtyard.drivers"
DISABLE_AUTOLOAD_ENV = "COURTYARD_DISABLE_PLUGIN_AUTOLOAD"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

_rejected: dict[str, str] = {}


def _load(ref: str) -> DriverSpec:
    module_name, _, attr = ref.partition(":")
    spec = getattr(importlib.import_module(module_name), attr or "DRIVER")
    if not isinstance(spec, DriverSpec):
        raise TypeError(f"{ref} is not a DriverSpec")
    return spec


def check_spec(spec: DriverSpec, known: dict[str, DriverSpec]) -> list[str]:
    """Why the gateway could not use `spec` next to the `known` ones (empty: it can)."""
    problems = []
    if not _NAME.match(spec.name):
        problems.append(f"name {spec.name!r} is not lowercase letters, digits and _")
    if not _NAME.match(spec.kind):
        problems.append(f"kind {spec.kind!r} is not lowercase letters, digits and _")
    if spec.shape not in ("polling", "push"):
        problems.append(f"shape {spec.shape!r} is neither polling nor push")
    if not (isinstance(spec.config, type) and issubclass(spec.config, DeviceConfig)):
        problems.append("config is not a DeviceConfig subclass")
    else:
        field = spec.config.model_fields.get("driver")
        if field is None or get_args(field.annotation) != (spec.name,):
            problems.append(f"config {spec.config.__name__}.driver is not Literal[{spec.name!r}]")
    for label, ref in (("factory", spec.factory), ("decoder", spec.decoder),
                       ("scenario_adapter", spec.scenario_adapter)):
        if isinstance(ref, str) and not _REF.match(ref):
            problems.append(f"{label} {ref!r} is not 'module:Name'")
    if spec.simulator is not None and not spec.simulator_module:
        problems.append(f"simulator {spec.simulator!r} names no simulator_module")
    if not (isinstance(spec.payload, type) and issubclass(spec.payload, BaseModel)):
        problems.append("payload is not a pydantic model")
        return problems
    tag = payload_kind(spec.payload)
    if tag is None:
        problems.append(f"payload {spec.payload.__name__} has no `kind: Literal[...]` field with that default")
    for other in known.values():
        if other.kind == spec.kind and other.payload is not spec.payload:
            problems.append(f"kind {spec.kind!r} is {other.name}'s, with payload "
                            f"{getattr(other.payload, '__name__', None)}, not {spec.payload.__name__}")
        elif other.payload is not spec.payload and other.payload is not None and payload_kind(other.payload) == tag:
            problems.append(f"payload kind {tag!r} is taken by {other.name}'s {other.payload.__name__}")
    if tag == "connectivity":
        problems.append("payload kind 'connectivity' is the gateway's own")
    if spec.simulator is not None and any(o.simulator == spec.simulator for o in known.values()):
        problems.append(f"simulator name {spec.simulator!r} is taken")
    return list(dict.fromkeys(problems))


@cache
def drivers() -> dict[str, DriverSpec]:
    """All usable drivers by name; built-ins win over a plugin of the same name."""
    found: dict[str, DriverSpec] = {}
    _rejected.clear()
    for ref in BUILTIN:
        spec = _load(ref)
        found[spec.name] = spec
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                spec = ep.load()
            except Exception as exc:  # a broken plugin must not take the gateway down
                log.exception("driver plugin %s failed to load", ep.name)
                _rejected[ep.name] = f"{ep.value} failed to load: {type(exc).__name__}: {exc}"
                continue
            if not isinstance(spec, DriverSpec):
                log.error("driver plugin %s is not a DriverSpec", ep.name)
                _rejected[ep.name] = f"{ep.value} is not a DriverSpec"
            elif spec.name in found:
                log.warning("driver plugin %s ignored: name %r already registered", ep.value, spec.name)
            elif problems := check_spec(spec, found):
                log.error("driver plugin %s (%s) refused: %s", spec.name, ep.value, "; ".join(problems))
                _rejected[spec.name] = f"{ep.value}: {'; '.join(problems)}"
            else:
                found[spec.name] = spec
    return found


def rejected() -> dict[str, str]:
    """Plugin drivers found but refused, with why (for `courtyard validate` and `drivers`)."""
    drivers()
    return dict(_rejected)


def get(name: str) -> DriverSpec:
    """The driver called `name`; KeyError lists the known ones (and why a refused one was refused)."""
    known = drivers()
    if name not in known:
        why = f" (refused: {_rejected[name]})" if name in _rejected else ""
        raise KeyError(f"unknown driver {name!r}{why}; known: {', '.join(sorted(known))}")
    return known[name]


@cache
def device_kinds() -> tuple[str, ...]:
    """Every device kind a registered driver serves."""
    return tuple(dict.fromkeys(s.kind for s in drivers().values()))


@cache
def event_model() -> type[Event]:
    """The event envelope for the registered kinds and payloads (`schemas.event.Event` for the built-ins)."""
    payloads = tuple(dict.fromkeys(s.payload for s in drivers().values() if s.payload is not None))
    return build_event_model(device_kinds(), payloads)


def device_ref_model() -> type[DeviceRef]:
    """The envelope's `device` block model (its `kind` admits every registered kind)."""
    model: Any = event_model().model_fields["device"].annotation
    return model  # type: ignore[no-any-return]


BACKEND_ENTRY_POINT_GROUP = "courtyard.backends"


@cache
def backends(driver: str) -> dict[str, str]:
    """Named alternative transport backends of `driver` (e.g. a simulated radio): name -> "module:object".

    Built-in ones come from `simulators.BACKENDS`; plugins add entry points named `<driver>.<name>`
    in the `courtyard.backends` group.
    """
    from simulators import BACKENDS

    found = dict(BACKENDS.get(driver, {}))
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        for ep in entry_points(group=BACKEND_ENTRY_POINT_GROUP):
            owner, _, name = ep.name.partition(".")
            if owner == driver and name:
                found.setdefault(name, ep.value)
    return found


def backend(driver: str, name: str) -> Any:
    """The backend object `name` of `driver`; KeyError names the known ones."""
    known = backends(driver)
    if name not in known:
        raise KeyError(f"{driver} has no backend {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    module, _, attr = known[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def simulators() -> dict[str, str]:
    """`courtyard simulate` names -> simulator modules."""
    return {s.simulator: s.simulator_module for s in drivers().values() if s.simulator and s.simulator_module}


def scenario_adapters() -> dict[str, str]:
    """Device kind -> "module:KindAdapter" (the first driver of a kind that names one)."""
    adapters: dict[str, str] = {}
    for s in drivers().values():
        if s.scenario_adapter:
            adapters.setdefault(s.kind, s.scenario_adapter)
    return adapters
