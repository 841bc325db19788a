"""Commands to devices: the request, its result, and the `command` event payload.

Plain pydantic models, so the JSON Schemas (`schemas/command_*.schema.json`) and an AsyncAPI
document can be generated from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import INT64_MAX, INT64_MIN

REQUEST_SCHEMA_ID = "courtyard.command.request/1"
RESULT_SCHEMA_ID = "courtyard.command.result/1"

#: Every state a command can be in: `accepted -> sent -> succeeded | failed | expired`, or
#: `rejected` at once. The last four are outcomes: final, never changed again.
CommandState = Literal["accepted", "sent", "succeeded", "failed", "expired", "rejected"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "expired", "rejected"})

#: Names: a command name and an argument name are identifiers, so they fit in topics and types.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
#: Largest request body accepted on MQTT, in bytes: a bigger one is rejected unread.
MAX_REQUEST_BYTES = 4096

#: Integers are bounded to int64 like every integer in the event schema (a request with a larger
#: one is rejected as bad arguments, not carried into events that a database would refuse).
ArgValue = str | Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | float | bool


class CommandRequest(BaseModel):
    """A request, as published on `courtyard/{site}/{kind}/{device}/cmd/{name}` (QoS 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Courtyard command request")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                    description="Chosen by the requester (a UUID); the command's identity: a repeated id"
                    " gets the existing result, never a second execution")
    args: dict[str, ArgValue] = Field(default_factory=dict, max_length=16,
                                      description="The command's arguments, by name (see the device kind's commands)")
    ttl_s: float = Field(30.0, gt=0, le=3600,
                         description="Seconds after acceptance past which the command is never executed")
    requested_by: str | None = Field(None, max_length=128,
                                     description="Who asks (informational; authorization uses the MQTT username)")


class CommandResult(BaseModel):
    """A state change of a command, as published on `.../cmd/{name}/result` (QoS 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Courtyard command result", populate_by_name=True)

    schema_: Literal["courtyard.command.result/1"] = Field("courtyard.command.result/1", alias="schema")
    id: str = Field(description="The request's id (also MQTT 5 correlation data when the request had one)")
    site: str
    gateway: str
    device: str
    kind: str
    name: str = Field(description="The command")
    state: CommandState
    reason: str | None = Field(None, description="Why it was rejected, failed or expired; the device's own"
                               " reason when it refused")
    latency_ms: float | None = Field(None, description="From acceptance to this state")
    requested_by: str | None = None
    requester: str | None = Field(None, description="The authorized identity, e.g. mqtt:<username>")
    accepted: str = Field(description="When the gateway accepted (or rejected) it, RFC 3339 UTC")
    time: str = Field(description="When it entered this state, RFC 3339 UTC")
    final: bool = Field(description="True for succeeded, failed, expired and rejected: nothing follows")

    def to_json(self) -> str:
        """Serialized as published."""
        return self.model_dump_json(by_alias=True)


class CommandPayload(BaseModel):
    """Payload of a `command.<name>` event (class `command`): one state change of one command."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["command"] = "command"
    command_id: str
    name: str
    command_state: CommandState
    reason: str | None = None
    latency_ms: float | None = None
    requester: str | None = None
    args: dict[str, ArgValue] = Field(default_factory=dict)
