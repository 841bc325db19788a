"""Protocol-true device simulators with fault injection, one package per device family.

A simulator is named after its device kind (`courtyard simulate pa`), like the scenario kinds
and the docs; only drivers carry a transport prefix (`opcua_pa`), as a kind may have several.

Each module exposes `add_arguments(parser)` and `async serve(args)` for `courtyard simulate`.
Which simulators exist is the driver registry's to say (`DriverSpec.simulator` and
`simulator_module`), so a plugin's simulator is listed like a built-in one.
"""

from __future__ import annotations

from typing import Any

#: Former `courtyard simulate` names -> today's. Still accepted, with a deprecation note on
#: stderr and in `--help`; they go with the next incompatible release.
SIMULATOR_ALIASES: dict[str, str] = {"broadcast": "pa"}

#: Alternative transport backends by driver, then name -> "module:object" (imported on first
#: use). Drivers reach them through `gateway.registry.backend`, never by importing simulators.
BACKENDS: dict[str, dict[str, str]] = {
    "ble_access_gate": {
        "simulated": "simulators.access_gate.gateway_backend:SIMULATED",
        "bumble": "simulators.access_gate.gateway_backend:BUMBLE",
    },
}

#: Settings simulated backends add to a driver's device entries: driver -> field -> "module:Model".
#: The registry adds them to the config model it builds (`gateway.registry.device_config_model`),
#: so the drivers' own config models hold production settings only.
CONFIG_EXTENSIONS: dict[str, dict[str, str]] = {
    "ble_access_gate": {"simulation": "simulators.access_gate.options:SimulationConfig"},
}


def __getattr__(name: str) -> Any:
    if name == "SIMULATORS":  # name -> module, built from the registry on first use
        from gateway.registry import simulators

        return simulators()
    raise AttributeError(name)
