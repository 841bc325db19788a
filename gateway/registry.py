"""Driver registry: the built-in list plus the `courtyard.drivers` entry-point group.

Everything kind-specific the gateway needs is built from here, not listed by hand: the
config model (`gateway.config.config_model`), the device kinds and the event envelope with
its payload union (`event_model`), the JSON Schemas, `courtyard simulate`'s simulators, the
scenario adapters and the transports' named backends. A plugin that declares a new kind and
its payload model therefore extends all of them.

A driver spec that cannot work (`unusable_reason`: a kind without a payload model, a payload
or kind another driver owns, an unknown shape, a config model that is not a `DeviceConfig`)
never stops the gateway: it is logged and remembered in `problems()`, `courtyard validate`
names it (an error for the devices that use it), and `Gateway.start` skips those devices
(counted) while the others run. A spec whose config model is unusable cannot even parse its
devices, so it is left out of `drivers()`.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from functools import cache
from importlib.metadata import entry_points
from typing import Any, get_args

from pydantic import BaseModel, create_model

from drivers import BUILTIN
from gateway.driver import DeviceConfig, DriverSpec
from schemas.common import DeviceRef
from schemas.event import Event, build_event_model, payload_kind

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "courtyard.drivers"
BACKEND_ENTRY_POINT_GROUP = "courtyard.backends"
DISABLE_AUTOLOAD_ENV = "COURTYARD_DISABLE_PLUGIN_AUTOLOAD"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

_problems: dict[str, str] = {}


def _load(ref: str) -> DriverSpec:
    module_name, _, attr = ref.partition(":")
    spec = getattr(importlib.import_module(module_name), attr or "DRIVER")
    if not isinstance(spec, DriverSpec):
        raise TypeError(f"{ref} is not a DriverSpec")
    return spec


def check_spec(spec: DriverSpec, known: dict[str, DriverSpec]) -> list[str]:
    """Every reason the gateway could not use `spec` next to the `known` ones (empty: it can)."""
    problems = []
    if not _NAME.match(str(spec.name)):
        problems.append(f"name {spec.name!r} is not lowercase letters, digits and _")
    if not _NAME.match(str(spec.kind)):
        problems.append(f"device kind {spec.kind!r} is not lowercase letters, digits and _")
    if spec.shape not in ("polling", "push"):
        problems.append(f"shape {spec.shape!r} is neither polling nor push")
    if not (isinstance(spec.config, type) and issubclass(spec.config, DeviceConfig)):
        problems.append(f"config {spec.config!r} is not a DeviceConfig model")
    else:
        field = spec.config.model_fields.get("driver")
        if field is None or get_args(field.annotation) != (spec.name,):
            problems.append(f"config {spec.config.__name__}.driver is not Literal[{spec.name!r}]")
    if not (callable(spec.factory) or (isinstance(spec.factory, str) and _REF.match(spec.factory))):
        problems.append(f"factory {spec.factory!r} is neither callable nor 'module:Class'")
    for label, ref in (("decoder", spec.decoder), ("scenario_adapter", spec.scenario_adapter)):
        if ref is not None and not _REF.match(ref):
            problems.append(f"{label} {ref!r} is not 'module:Name'")
    if spec.simulator is not None and not spec.simulator_module:
        problems.append(f"simulator {spec.simulator!r} names no simulator_module")
    if spec.simulator is not None and any(o.simulator == spec.simulator for o in known.values() if o is not spec):
        problems.append(f"simulator name {spec.simulator!r} is taken")
    if not (isinstance(spec.payload, type) and issubclass(spec.payload, BaseModel)):
        problems.append(f"device kind {spec.kind!r} has no payload model (DriverSpec.payload)")
        return problems
    tag = payload_kind(spec.payload)
    if tag is None:
        problems.append(f"payload {spec.payload.__name__} has no `kind: Literal[...]` field with that default")
    elif tag == "connectivity":
        problems.append("payload kind 'connectivity' is the gateway's own")
    for other in known.values():
        if other is spec or other.payload is None:
            continue
        if other.kind == spec.kind and other.payload is not spec.payload:
            problems.append(f"device kind {spec.kind!r} is {other.name}'s, with payload "
                            f"{other.payload.__name__}, not {spec.payload.__name__}")
        elif other.payload is not spec.payload and payload_kind(other.payload) == tag:
            problems.append(f"payload kind {tag!r} is taken by {other.name}'s {other.payload.__name__}")
    return list(dict.fromkeys(problems))


def unusable_reason(spec: DriverSpec, known: dict[str, DriverSpec] | None = None) -> str | None:
    """Why devices of this driver cannot run, or None."""
    problems = check_spec(spec, known if known is not None else drivers())
    return "; ".join(problems) if problems else None


def _admit(found: dict[str, DriverSpec], spec: DriverSpec, origin: str) -> None:
    reason = unusable_reason(spec, found)
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
    for built in (device_kinds, event_model, backends, device_config_model):
        built.cache_clear()


def problems() -> dict[str, str]:
    """Unusable drivers (and plugins that failed to load), by name: `origin: reason`."""
    drivers()
    return dict(_problems)


@cache
def drivers() -> dict[str, DriverSpec]:
    """All known drivers by name (unusable ones too, when their devices can be parsed: see `problems`).

    Built-ins win over a plugin of the same name.
    """
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


def usable() -> dict[str, DriverSpec]:
    """The drivers whose devices can run (`drivers()` minus `problems()`)."""
    bad = problems()
    return {name: spec for name, spec in drivers().items() if name not in bad}


def get(name: str) -> DriverSpec:
    """The driver called `name`; KeyError lists the known ones."""
    known = drivers()
    if name not in known:
        why = f" ({_problems[name]})" if name in _problems else ""
        raise KeyError(f"unknown driver {name!r}{why}; known: {', '.join(sorted(known))}")
    return known[name]


@cache
def device_kinds() -> tuple[str, ...]:
    """Every device kind a usable driver serves."""
    return tuple(dict.fromkeys(s.kind for s in usable().values()))


@cache
def event_model() -> type[Event]:
    """The event envelope for the registered kinds and payloads (`schemas.event.Event` for the built-ins)."""
    payloads = tuple(dict.fromkeys(s.payload for s in usable().values() if s.payload is not None))
    return build_event_model(device_kinds(), payloads)


def device_ref_model() -> type[DeviceRef]:
    """The envelope's `device` block model (its `kind` admits every registered kind)."""
    model: Any = event_model().model_fields["device"].annotation
    return model  # type: ignore[no-any-return]


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


@cache
def device_config_model(name: str) -> type[DeviceConfig]:
    """The config model of `name`'s device entries: its own, plus what simulated backends add.

    Built-in extensions come from `simulators.CONFIG_EXTENSIONS` (the simulated gate's
    `simulation:` block), so a driver's production model holds no simulator settings.
    """
    from simulators import CONFIG_EXTENSIONS

    spec = drivers()[name]
    extra = CONFIG_EXTENSIONS.get(name)
    if not extra:
        return spec.config
    fields: dict[str, Any] = {}
    for field, ref in extra.items():
        module, _, attr = ref.partition(":")
        model = getattr(importlib.import_module(module), attr)
        fields[field] = (model, model())
    base: type[DeviceConfig] = spec.config
    return create_model(base.__name__, __base__=base, __doc__=base.__doc__, **fields)


def backend(driver: str, name: str) -> Any:
    """The backend object `name` of `driver`; KeyError names the known ones."""
    known = backends(driver)
    if name not in known:
        raise KeyError(f"{driver} has no backend {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    module, _, attr = known[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def simulators() -> dict[str, str]:
    """`courtyard simulate` names -> simulator modules."""
    return {s.simulator: s.simulator_module for s in usable().values() if s.simulator and s.simulator_module}


def scenario_adapters() -> dict[str, str]:
    """Device kind -> "module:KindAdapter" (the first driver of a kind that names one)."""
    adapters: dict[str, str] = {}
    for s in usable().values():
        if s.scenario_adapter:
            adapters.setdefault(s.kind, s.scenario_adapter)
    return adapters
