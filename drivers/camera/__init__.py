"""IP cameras and analytics boxes reporting video-analytics alarms (Hikvision ISAPI, Dahua, ONVIF)."""

from drivers.camera.config import CameraConfig
from gateway.driver import DriverSpec

DRIVER = DriverSpec(
    name="camera",
    kind="camera",
    transport="http",
    shape="push",
    config=CameraConfig,
    factory="drivers.camera.driver:CameraDriver",
    summary="Camera analytics alarms: fire, smoke, e-bike, intrusion, video loss, tamper (ISAPI, Dahua, ONVIF)",
    simulator="camera",
)

__all__ = ["DRIVER", "CameraConfig"]
