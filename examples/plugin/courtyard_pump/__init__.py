"""A water-pump controller over Modbus TCP: an example of a driver plugin with its own device kind.

Everything the gateway needs is in `DRIVER`; the `courtyard.drivers` entry point in
pyproject.toml is the only registration. Transport and simulator are imported on first use.
"""

from courtyard_pump.config import PumpConfig
from courtyard_pump.payload import PumpPayload
from gateway.driver import DriverSpec

DRIVER = DriverSpec(
    name="modbus_water_pump",
    kind="water_pump",
    payload=PumpPayload,
    transport="modbus_tcp",
    shape="polling",
    config=PumpConfig,
    factory="courtyard_pump.driver:PumpDriver",
    decoder="courtyard_pump.decoder:PumpDecoder",
    summary="Booster pump status, overheat and dry-run alarms from a Modbus TCP controller (example plugin)",
    simulator="water_pump",
    simulator_module="courtyard_pump.simulator",
    scenario_adapter="courtyard_pump.scenario:PumpAdapter",
)

__all__ = ["DRIVER", "PumpConfig", "PumpPayload"]
