"""The alarm lifecycle (ISA-18.2 / OPC UA Part 9): states, operations and their event payload.

Each transition of an alarm (acknowledged, shelved, unshelved, reset, cleared, closed,
escalated) is an event of class `alarm`, type `alarm.<transition>`, carrying the alarm's
`alarm_id` and this payload; see gateway/alarm_book.py and docs/rules.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

#: An alarm's lifecycle state. `closed` is ISA-18.2's cleared-and-acknowledged: nothing is left to do.
LifecycleState = Literal["active_unacked", "active_acked", "cleared_unacked", "closed"]
#: What a person may do to an alarm.
AlarmOp = Literal["ack", "shelve", "unshelve", "reset"]
ALARM_OPS: tuple[str, ...] = ("ack", "shelve", "unshelve", "reset")
#: Transitions published as `alarm.<transition>` events.
Transition = Literal["acked", "shelved", "unshelved", "reset", "cleared", "closed", "escalated"]
#: Largest operation request accepted on MQTT, in bytes.
MAX_OP_BYTES = 4096


class AlarmOpRequest(BaseModel):
    """An operation on an alarm, as published on `{p}/{site}/alarm/{alarm_id}/cmd/{op}`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Courtyard alarm operation")

    id: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                           description="Chosen by the requester; echoed in the result")
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]*$",
                      description="The person who acts (journaled; the requester is mqtt:<user>)")
    comment: str | None = Field(None, max_length=500)
    until: AwareDatetime | None = Field(None, description="shelve: when the shelving ends (required)")


class AlarmLifecyclePayload(BaseModel):
    """Payload of an `alarm.<transition>` event: the alarm's whole state after the transition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["alarm_lifecycle"] = "alarm_lifecycle"
    transition: Transition
    alarm_type: str = Field(description="The type of the alarm's raise, e.g. camera.fire_detected")
    lifecycle_state: LifecycleState
    latched: bool = Field(False, description="Held until a person resets it (fire, tamper by default)")
    shelved_until: AwareDatetime | None = None
    raised_at: AwareDatetime
    cleared_at: AwareDatetime | None = None
    user: str | None = Field(None, description="Who acted (none for cleared/closed by the device, escalated)")
    requester: str | None = None
    comment: str | None = None
    acked_by: str | None = None
    raise_event_id: str | None = Field(None, description="The id of the event that raised the alarm")
