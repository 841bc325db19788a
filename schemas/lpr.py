"""Licence-plate reader payload."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Count64, Frozen, Int64

PlateColor = Literal["blue", "yellow", "white", "black", "green", "yellow_green", "unknown"]
PlateClass = Literal["ordinary", "nev_small", "nev_large", "embassy", "none"]
VehicleDirection = Literal["entry", "exit", "unknown"]
GateAction = Literal["open", "deny"]
GateReason = Literal[
    "allowlist",
    "blocklist",
    "visitor",
    "visitor_expired",
    "unknown",
    "unpaid",
    "invalid_plate",
    "no_plate",
]
GateState = Literal["up", "down"]


class LprPayload(Frozen):
    """Body of every `lpr.*` event; fields not relevant to an event type are null."""

    kind: Literal["lpr"] = "lpr"
    plate: str | None = Field(None, description="Normalized plate (half-width, upper case, no separators)")
    plate_raw: str | None = Field(None, description="Plate exactly as the camera sent it (after base64/GBK decoding)")
    plate_color: PlateColor | None = Field(
        None,
        description="Plate colour: the camera's colour code, else a colour word it put before the plate (蓝苏A8HK52)",
    )
    plate_type: str | None = Field(
        None,
        description="Vendor plate type mapped to a Courtyard token, e.g. nev_small; `unknown` for codes not in the "
        "camera's table (the raw code stays in the event's raw_code)",
    )
    plate_class: PlateClass | None = Field(None, description="Which GA 36 rule the plate matched")
    confidence: float | None = Field(None, ge=0, le=1, description="Recognition confidence rescaled to 0..1")
    direction: VehicleDirection | None = None
    lane: str | None = None
    image_uri: tuple[str, ...] | None = Field(None, description="Where the images are stored (never inline)")
    is_offline_replay: bool | None = Field(None, description="Read buffered by the camera while the link was down")
    is_fake_plate: bool | None = Field(None, description="Camera flagged a photographed or screen plate")
    decision: GateAction | None = None
    reason: GateReason | None = None
    pass_id: str | None = Field(None, description="Visitor pass that decided the gate, if any")
    gate_state: GateState | None = None
    io_input: Count64 | None = Field(None, description="GPIO input number (lpr.io_trigger)")
    io_value: Int64 | None = None
    suppressed: Count64 | None = Field(
        None,
        description="Duplicate reads of this plate on this lane suppressed since the last event",
    )
    detail: str | None = Field(None, description="Why a push was rejected, in words")
