"""Camera video-analytics payload: fire, smoke, e-bike, intrusion, video loss, tamper, motion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Count64, Frozen, Location

#: The gateway's detection vocabulary; every vendor code maps to one of these (or `unknown`).
Detection = Literal["fire", "smoke", "ebike", "intrusion", "video_loss", "tamper", "motion", "unknown"]
#: Where an e-bike was seen; `other` when the camera's channel is not configured with a place.
EbikeWhere = Literal["lobby", "elevator_car", "corridor", "garage", "stairwell", "other"]
CameraProtocol = Literal["isapi", "isapi_push", "dahua", "onvif"]
Rule = Literal["intrusion", "line_crossing", "region_entrance", "region_exit", "loitering"]


class CameraPayload(Frozen):
    """Body of every `camera.*` event; fields not relevant to an event type are null."""

    kind: Literal["camera"] = "camera"
    detection: Detection
    channel: Count64 | None = Field(None, description="Video channel (1-based) the detection is on")
    channel_name: str | None = Field(None, description="Channel name from the config, else the camera's")
    protocol: CameraProtocol | None = None
    rule: Rule | None = Field(None, description="Which intrusion rule fired (camera.intrusion)")
    region: str | None = Field(None, description="Rule, region or line name as configured on the camera")
    region_id: str | None = Field(None, description="The camera's region/rule number, as sent")
    where: EbikeWhere | None = Field(None, description="Place of an e-bike (camera.ebike_detected)")
    target: str | None = Field(None, description="Object class the camera named: human, vehicle, ebike, ...")
    confidence: float | None = Field(None, ge=0, le=1, description="Detection confidence rescaled to 0..1")
    location: Location | None = Field(
        None, description="Where the channel looks: the camera's location with the channel's override applied"
    )
    snapshot_uri: str | None = Field(None, description="Stored picture of the detection (never inline)")
    pulse: bool | None = Field(None, description="The camera only reported a pulse; the clear is the gateway's")
    duration_s: float | None = Field(None, ge=0, description="How long the alarm was active (clears)")
    code: str | None = Field(None, description="Vendor event code, for camera.event.unknown and audits")
    detail: str | None = Field(None, description="Why an input was rejected, in words")
