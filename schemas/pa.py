"""PA / broadcast amplifier payload (docs/domain.md, "PA and voice-alarm amplifiers")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Frozen, Int64

ZoneState = Literal["idle", "background", "paging", "emergency", "fault", "unknown"]
EmergencySource = Literal["fire_linkage", "manual", "unknown"]
LineFault = Literal["short", "open", "earth", "speaker_damaged"]
AmpFault = Literal["overheat", "overload", "channel_failure"]


class PaPayload(Frozen):
    """Body of every `pa.*` event; fields not relevant to an event type are null."""

    kind: Literal["pa"] = "pa"
    zone: str | None = Field(None, description="Zone id from the node map")
    zone_name: str | None = None
    amplifier: str | None = Field(None, description="Amplifier id from the node map")
    line: str | None = Field(None, description="Loudspeaker line id from the node map")
    zone_state: ZoneState | None = None
    volume_db: float | None = Field(None, description="Zone volume in dB (0 = full scale)")
    source: str | None = Field(None, description="What the zone plays: music, mic, message:<id>, ...")
    priority: Int64 | None = Field(None, description="Priority of the active call in the zone")
    emergency_source: EmergencySource | None = None
    zones: tuple[str, ...] | None = Field(None, description="Zones an emergency broadcast covers")
    message: str | None = Field(None, description="Emergency message id or text")
    fault: str | None = Field(None, description="Fault condition, e.g. short, open, overheat")
    temperature_c: float | None = None
    load_pct: float | None = None
    battery_pct: float | None = None
    spare: str | None = Field(None, description="Spare amplifier that took over")
    raw: dict[str, str] | None = Field(None, description="Raw node values of a rejected or suspect sample")
