"""BLE access gates, turnstiles and door controllers (Courtyard Open Gate Profile over bleak)."""

from drivers.ble_access_gate.config import BleAccessGateConfig
from gateway.driver import DriverSpec
from schemas.access import AccessPayload

DRIVER = DriverSpec(
    name="ble_access_gate",
    kind="access_gate",
    payload=AccessPayload,
    transport="ble",
    shape="push",
    config=BleAccessGateConfig,
    factory="drivers.ble_access_gate.driver:BleAccessGateDriver",
    decoder="drivers.ble_access_gate.decoder:GateDecoder",
    summary="Access gates and door controllers over BLE GATT (COGP v1): events, status, history backfill",
    simulator="access_gate",
    simulator_module="simulators.access_gate",
    scenario_adapter="simulators.scenario.access_gate:AccessGateAdapter",
    # Commands (docs/commands.md): the executor, built as `Class(config)` by the command journal.
    extras={"commands": "drivers.ble_access_gate.commands:GateCommands"},
)

__all__ = ["DRIVER", "BleAccessGateConfig"]
