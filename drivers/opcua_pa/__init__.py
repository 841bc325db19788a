"""PA / broadcast amplifier systems over OPC UA (asyncua): zones, amplifiers, lines, power, emergency."""

from drivers.opcua_pa.config import OpcUaPaConfig
from gateway.driver import DriverSpec
from schemas.pa import PaPayload

DRIVER = DriverSpec(
    name="opcua_pa",
    kind="pa",
    payload=PaPayload,
    transport="opcua",
    shape="push",
    config=OpcUaPaConfig,
    factory="drivers.opcua_pa.driver:OpcUaPaDriver",
    decoder="drivers.opcua_pa.decoder:PaDecoder",
    summary="PA / broadcast amplifiers over OPC UA subscriptions; vendors described by YAML node maps",
    simulator="pa",
    simulator_module="simulators.pa",
    scenario_adapter="simulators.scenario.pa:PaAdapter",
    # Commands (docs/commands.md): the executor, built as `Class(config)` by the command journal.
    extras={"commands": "drivers.opcua_pa.commands:PaCommandExecutor"},
)

__all__ = ["DRIVER", "OpcUaPaConfig"]
