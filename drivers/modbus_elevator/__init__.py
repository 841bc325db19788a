"""Elevator controllers and monitoring boxes over Modbus TCP, described by register maps."""

from drivers.modbus_elevator.config import ModbusElevatorConfig
from gateway.driver import DriverSpec

DRIVER = DriverSpec(
    name="modbus_elevator",
    kind="elevator",
    transport="modbus_tcp",
    shape="polling",
    config=ModbusElevatorConfig,
    factory="drivers.modbus_elevator.driver:ModbusElevatorDriver",
    decoder="drivers.modbus_elevator.decoder:ElevatorDecoder",
    summary="Elevator status, faults and derived alarms from a Modbus TCP register map",
    simulator="elevator",
)

__all__ = ["DRIVER", "ModbusElevatorConfig"]
