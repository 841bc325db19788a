"""Elevator controllers and monitoring boxes over Modbus TCP, described by register maps."""

from drivers.modbus_elevator.config import ModbusElevatorConfig
from gateway.driver import DriverSpec
from schemas.elevator import ElevatorPayload

DRIVER = DriverSpec(
    name="modbus_elevator",
    kind="elevator",
    payload=ElevatorPayload,
    transport="modbus_tcp",
    shape="polling",
    config=ModbusElevatorConfig,
    factory="drivers.modbus_elevator.driver:ModbusElevatorDriver",
    decoder="drivers.modbus_elevator.decoder:ElevatorDecoder",
    summary="Elevator status, faults and derived alarms from a Modbus TCP register map",
    simulator="elevator",
    simulator_module="simulators.elevator",
    scenario_adapter="simulators.scenario.elevator:ElevatorAdapter",
)

__all__ = ["DRIVER", "ModbusElevatorConfig"]
