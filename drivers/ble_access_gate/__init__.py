"""BLE access gates, turnstiles and door controllers (Courtyard Open Gate Profile over bleak)."""

from drivers.ble_access_gate.config import BleAccessGateConfig
from gateway.driver import DriverSpec

DRIVER = DriverSpec(
    name="ble_access_gate",
    kind="access_gate",
    transport="ble",
    shape="push",
    config=BleAccessGateConfig,
    factory="drivers.ble_access_gate.driver:BleAccessGateDriver",
    decoder="drivers.ble_access_gate.decoder:GateDecoder",
    summary="Access gates and door controllers over BLE GATT (COGP v1): events, status, history backfill",
    simulator="access_gate",
)

__all__ = ["DRIVER", "BleAccessGateConfig"]
