"""Configuration of one camera (one device entry) for the `camera` driver.

`protocol` picks the transport: `isapi` (the gateway holds Hikvision's alertStream open),
`isapi_push` (the camera posts alerts to the gateway's shared HTTP listener), `dahua`
(eventManager.cgi attach) or `onvif` (PullPoint). The event vocabulary is the same for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# The push listener and its auth modes are the plate readers': one listener, one set of defences.
from drivers.http_plate_reader.listener_config import Auth as PushAuth
from drivers.http_plate_reader.listener_config import ListenerSettings, SourceNetwork, unauthenticated_network_problem
from drivers.http_plate_reader.listener_config import NoAuth as NoPushAuth
from gateway.driver import DeviceConfig
from schemas.camera import EbikeWhere
from schemas.common import Location


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraChannel(_Strict):
    """One video channel: its name, and where it looks when that differs from the camera's location."""

    name: str | None = None
    location: Location = Field(Location(), description="Overrides the camera's location field by field")
    where: EbikeWhere | None = Field(None, description="Kind of place, for camera.ebike_detected")


class CameraMediaConfig(_Strict):
    """Where snapshots go: a bounded folder, oldest evicted first. Devices sharing a path share the budget."""

    path: Path = Path("./courtyard-data/camera-media")
    max_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_image_bytes: int = Field(2 * 1024 * 1024, gt=0, description="Larger pictures are dropped and counted")
    uri_prefix: str | None = Field(None, description="Prefix for snapshot URIs; default file:// URIs")


class OnvifOptions(_Strict):
    """PullPoint settings (protocol: onvif)."""

    family: str = Field("generic", description="Topic map in drivers/camera/onvif_maps/<family>.yaml")
    pull_timeout_s: float = Field(10.0, gt=0, le=120)
    message_limit: int = Field(32, ge=1, le=1024)
    termination_s: float = Field(60.0, gt=0, description="Subscription lifetime asked for; renewed before")
    service_path: str = Field("/onvif/device_service", pattern=r"^/")

    @field_validator("family")
    @classmethod
    def _shipped_family(cls, value: str) -> str:
        # A typo would otherwise be a link failure at run time; validate names it with its line.
        from drivers.camera.onvif import families  # the maps folder is read only when ONVIF is configured

        known = families()
        if value not in known:
            raise ValueError(f"unknown ONVIF family {value!r}; shipped: {', '.join(known)}")
        return value


class CameraConfig(DeviceConfig):
    """One IP camera or analytics box reporting detections to the gateway."""

    driver: Literal["camera"]
    protocol: Literal["isapi", "isapi_push", "dahua", "onvif"] = "isapi"
    url: str | None = Field(
        None, pattern=r"^https?://[^\s]+$",
        description="Camera base URL (isapi, dahua, onvif), e.g. http://192.168.1.64 (a path prefix is kept)",
    )
    username: str = "admin"
    password: SecretStr | None = None
    auth: Literal["digest", "basic"] = Field("digest", description="HTTP auth to the camera")
    channels: dict[int, CameraChannel] = Field(default_factory=dict, description="Per-channel names and places")
    where: EbikeWhere | None = Field(None, description="Kind of place for every channel without its own")
    motion: bool = Field(False, description="Emit camera.motion (info); off: motion is counted, not sent")
    pulse_hold_s: float = Field(
        30.0, gt=0, description="Pulse-only detections are raised, then cleared after this hold"
    )
    codes: dict[str, str] = Field(
        default_factory=dict,
        description="Extra vendor codes -> detection (fire, smoke, ebike, intrusion, video_loss, tamper, motion)",
    )
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="No bytes (events or heartbeats) for this long counts as a miss"
    )
    max_clock_skew_s: float = Field(
        300.0, gt=0, description="Camera time further than this from the gateway's: receipt time used, suspect"
    )
    connect_timeout_s: float = Field(5.0, gt=0)
    max_part_bytes: int = Field(4 * 1024 * 1024, gt=0, description="A larger multipart part is rejected")
    fetch_snapshots: bool = Field(True, description="Fetch a picture when an alarm arrives without one")
    snapshot_path: str | None = Field(
        None, pattern=r"^/",
        description="Snapshot path under url, {channel} replaced; default: the protocol's "
        "(/ISAPI/Streaming/channels/{channel}01/picture, /cgi-bin/snapshot.cgi?channel={channel})",
    )
    media: CameraMediaConfig = CameraMediaConfig()
    # isapi_push: where the camera posts (the listener shared with plate readers)
    listen_host: str = Field(
        "127.0.0.1", description="Listener address (isapi_push); a non-loopback one needs push_auth or allow_sources"
    )
    listen_port: int = Field(8088, ge=1, le=65535)
    path: str | None = Field(None, pattern=r"^/[^?# ]*$", description="Push path; default /camera/<device id>")
    push_auth: PushAuth = Field(NoPushAuth(), description="How the camera authenticates its posts (isapi_push)")
    push_rate_per_s: float = Field(20.0, gt=0, description="Sustained posts per second per source address")
    push_burst: int = Field(40, ge=1)
    push_rate_total_per_s: float = Field(50.0, gt=0, description="Authenticated posts per second, all sources")
    push_total_burst: int = Field(100, ge=1)
    allow_sources: list[SourceNetwork] = Field(
        default_factory=list, description="Addresses (CIDRs) the camera may post from (isapi_push); empty: any"
    )
    listener: ListenerSettings = Field(
        default_factory=ListenerSettings,
        description="Limits of the shared listener; devices on the same address and port must agree",
    )
    onvif: OnvifOptions = OnvifOptions()

    @model_validator(mode="after")
    def _needs_url(self) -> CameraConfig:
        if self.protocol != "isapi_push" and self.url is None:
            raise ValueError(f"protocol {self.protocol} needs url (the camera's base URL)")
        if self.protocol != "isapi_push" and self.password is None:
            raise ValueError(f"protocol {self.protocol} needs password (the camera account's)")
        if self.protocol == "isapi_push":
            problem = unauthenticated_network_problem(self.listen_host, self.push_auth, self.allow_sources)
            if problem is not None:
                raise ValueError(problem.replace("auth is none", "push_auth is none"))
        from drivers.camera.events import DETECTIONS

        bad = sorted(v for v in self.codes.values() if v not in DETECTIONS)
        if bad:
            raise ValueError(f"codes: unknown detections {', '.join(bad)}; known: {', '.join(DETECTIONS)}")
        return self

    @property
    def push_path(self) -> str:
        """The listener path an isapi_push camera posts to."""
        return self.path or f"/camera/{self.id}"

    def channel_location(self, channel: int | None) -> Location:
        """The camera's location with channel `channel`'s override applied."""
        ch = self.channels.get(channel) if channel is not None else None
        return ch.location.over(self.location) if ch else self.location

    def channel_where(self, channel: int | None) -> EbikeWhere | None:
        """Kind of place the channel looks at (e-bike events)."""
        ch = self.channels.get(channel) if channel is not None else None
        return (ch.where if ch and ch.where else None) or self.where
