"""Garage licence-plate cameras pushing reads to the gateway over HTTP (Zhenshi, Hikvision, Dahua ITSAPI)."""

from drivers.http_plate_reader.config import HttpPlateReaderConfig
from gateway.driver import DriverSpec
from schemas.lpr import LprPayload

DRIVER = DriverSpec(
    name="http_plate_reader",
    kind="plate_reader",
    payload=LprPayload,
    transport="http",
    shape="push",
    config=HttpPlateReaderConfig,
    factory="drivers.http_plate_reader.driver:HttpPlateReader",
    decoder="drivers.http_plate_reader.decoder:PlateDecoder",
    summary="Licence-plate cameras (Zhenshi, Hikvision, Dahua ITSAPI) push reads; barrier decided at the edge",
    simulator="plate_reader",
    simulator_module="simulators.plate_reader",
    scenario_adapter="simulators.scenario.plate_reader:PlateReaderAdapter",
    # Commands (docs/commands.md): the executor, built as `Class(config)` by the command journal.
    extras={"commands": "drivers.http_plate_reader.commands:PlateReaderCommands"},
)

__all__ = ["DRIVER", "HttpPlateReaderConfig"]
