"""IP cameras and analytics boxes reporting video-analytics alarms (Hikvision ISAPI, Dahua, ONVIF)."""

from drivers.camera.config import CameraConfig
from gateway.driver import DriverSpec
from schemas.camera import CameraPayload

DRIVER = DriverSpec(
    name="camera",
    kind="camera",
    payload=CameraPayload,
    transport="http",
    shape="push",
    config=CameraConfig,
    factory="drivers.camera.driver:CameraDriver",
    decoder="drivers.camera.decoder:CameraDecoder",
    summary="Camera analytics alarms: fire, smoke, e-bike, intrusion, video loss, tamper (ISAPI, Dahua, ONVIF)",
    simulator="camera",
    simulator_module="simulators.camera",
    scenario_adapter="simulators.scenario.camera:CameraAdapter",
    # Commands (docs/commands.md): the executor, built as `Class(config)` by the command journal.
    extras={"commands": "drivers.camera.commands:CameraCommands"},
)

__all__ = ["DRIVER", "CameraConfig"]
