"""Command contract pieces that need no servers: schemas, allowlist, register-map mailbox, argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from drivers.modbus_elevator.commands import ElevatorCommands
from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.regmap import CommandMailbox, load_map
from gateway.commands import CommandRejected
from gateway.config import CommandsConfig
from schemas.export import COMMAND_REQUEST_SCHEMA_PATH, command_json_schemas, render


def test_committed_command_schemas_match_the_models() -> None:
    for path, schema in command_json_schemas().items():
        assert path.read_text(encoding="utf-8") == render(schema), f"{path.name} drifted: run python -m schemas.export"


def test_request_schema_accepts_the_documented_request_and_refuses_bad_ones() -> None:
    schema = json.loads(COMMAND_REQUEST_SCHEMA_PATH.read_text())
    jsonschema.validate({"id": "0b5c3c1e-1d7a-4f64-9a8c-5d2e0e7b1a11", "args": {"floor": 1}, "ttl_s": 30,
                         "requested_by": "duty-room"}, schema)
    for bad in ({"args": {}}, {"id": "a", "ttl_s": 0}, {"id": "a", "extra": 1}, {"id": "a", "args": {"x": [1]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_allowlist() -> None:
    cfg = CommandsConfig.model_validate({"allow": [
        {"requesters": ["mqtt:duty-*", "console:*"], "devices": ["lift-*"], "commands": ["call", "hold_door"]},
        {"requesters": ["rule:fire-recall"], "devices": ["*"], "commands": ["return_to_floor"]},
    ]})
    assert cfg.allows("mqtt:duty-1", "lift-b1-1", "call")
    assert cfg.allows("console:anna", "lift-2", "hold_door")
    assert not cfg.allows("mqtt:tenant", "lift-b1-1", "call")
    assert not cfg.allows("mqtt:duty-1", "gate-1", "call")
    assert not cfg.allows("mqtt:duty-1", "lift-1", "return_to_floor")
    assert cfg.allows("rule:fire-recall", "lift-9", "return_to_floor")
    assert not CommandsConfig().allows("mqtt:", "lift-1", "call")  # nothing allowed by default
    with pytest.raises(ValidationError):
        CommandsConfig.model_validate({"allow": [{"requesters": [], "devices": ["*"], "commands": ["*"]}]})


def test_mailbox_layout_is_checked() -> None:
    base = {"block": {"address": 0, "count": 6}, "seq": 0, "code": 1, "ack": 4, "result": 5,
            "commands": {"call": {"code": 1, "args": {"floor": {"address": 2}}}}}
    assert CommandMailbox.model_validate(base).frame("call", 9, {"floor": 3}) == (0, [9, 1, 3])
    with pytest.raises(ValidationError, match="overwrite ack/result"):
        CommandMailbox.model_validate({**base, "ack": 1, "code": 2})
    with pytest.raises(ValidationError, match="outside the mailbox"):
        CommandMailbox.model_validate({**base, "commands": {"call": {"code": 1, "args": {"floor": {"address": 9}}}}})


@pytest.mark.parametrize("name", ["gbt24476", "monarch_vendor"])
def test_shipped_maps_offer_the_elevator_commands(name: str) -> None:
    mailbox = load_map(name).commands
    assert mailbox is not None
    assert set(mailbox.commands) == {"call", "hold_door", "release_door", "return_to_floor", "release_return"}


def test_argument_checks() -> None:
    ex = ElevatorCommands(ModbusElevatorConfig(id="l", driver="modbus_elevator", lowest_floor=-2, highest_floor=18))
    assert ex.check("call", {"floor": -2}) == {"floor": -2}
    assert ex.check("call", {"floor": "5"}) == {"floor": 5}
    assert ex.check("call", {"floor": 5.0}) == {"floor": 5}
    for args, reason in (({}, "missing_arg:floor"), ({"floor": 0}, "bad_arg:floor:floor_0_not_served"),
                         ({"floor": 19}, "bad_arg:floor:out_of_range"), ({"floor": 2.5}, "bad_arg:floor"),
                         ({"floor": True}, "bad_arg:floor"), ({"floor": 1, "x": 1}, "unexpected_args:x")):
        with pytest.raises(CommandRejected) as err:
            ex.check("call", args)
        assert err.value.reason.startswith(reason), (args, err.value.reason)
    with pytest.raises(CommandRejected, match="unknown_command"):
        ex.check("open", {})
    assert ex.check("hold_door", {"seconds": 60}) == {"seconds": 60}
    with pytest.raises(CommandRejected):
        ex.check("hold_door", {"seconds": 0})


async def test_journal_is_idempotent_and_forgets_old_outcomes_only(tmp_path: Path) -> None:
    import time

    from gateway.commands import Command, Journal, list_journal
    from gateway.outbox import Outbox

    def cmd(cid: str, state: str = "accepted", age_s: float = 0) -> Command:
        at = time.time_ns() - int(age_s * 1e9)
        return Command(id=cid, device="lift-1", kind="elevator", name="call", args={"floor": 2}, requester="mqtt:",
                       requested_by=None, state=state, reason=None, accepted_ns=at, updated_ns=at, expires_ns=at)

    async with Outbox(tmp_path / "o.db") as outbox:
        journal = Journal(outbox, keep_days=1)
        await journal.open()
        first, created = await journal.insert(cmd("a"))
        assert created and first.device_seq is not None
        again, created = await journal.insert(cmd("a"))
        assert not created and again.device_seq == first.device_seq
        second, _ = await journal.insert(cmd("b"))
        assert second.device_seq == first.device_seq % 65535 + 1  # consecutive
        await journal.insert(cmd("old-done", "succeeded", age_s=2 * 86400))
        await journal.insert(cmd("old-open", "sent", age_s=2 * 86400))
        done = await journal.update(first, "succeeded", None)
        assert (await journal.update(done, "failed", "late")).state == "failed"  # the returned copy only...
        await journal.purge()
        assert {c.id for c in await journal.unfinished()} == {"b", "old-open"}
    rows = {r.id: r for r in list_journal(tmp_path / "o.db")}
    assert set(rows) == {"a", "b", "old-open"}  # an old outcome is forgotten, an old open command is not
    assert rows["a"].state == "succeeded"  # ...the stored outcome is never changed
