"""PA node maps, value translation and the normalizer's raise/clear bookkeeping (pure, no I/O)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.opcua_pa.codec import decode, decode_bool, decode_enum, decode_number, encode, jsonable
from drivers.opcua_pa.nodemap import NodeMap, Point, builtin_maps, load_map
from drivers.opcua_pa.normalizer import PaNormalizer
from schemas.pa import PaPayload

MAPS = ["courtyard_sim", "harborvox_hv2400"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def test_both_maps_ship_and_validate() -> None:
    assert set(MAPS) <= set(builtin_maps())
    sim, hvx = (load_map(m) for m in MAPS)
    assert sim.namespace != hvx.namespace and sim.raw_prefix != hvx.raw_prefix
    # the second vendor really is different: paths, numeric ids, other codes, flags per line fault
    assert any(p.path for _, _, p in hvx.points())
    assert any(p.node and p.node.startswith("i=") for _, _, p in hvx.points())
    assert hvx.enums["zone_mode"][40] == "emergency" and sim.enums["zone_state"][3] == "emergency"
    assert {k for k, _, _ in hvx.points() if k.startswith("line.lobby-a.")} == {
        "line.lobby-a.short", "line.lobby-a.open", "line.lobby-a.earth", "line.lobby-a.speaker_damaged"}


def _base_map() -> dict[str, Any]:
    return {
        "vendor": "x", "namespace": "urn:x", "raw_prefix": "x",
        "enums": {"zs": {0: "idle", 1: "paging"}},
        "zones": [{"id": "z1", "state": {"node": "s=Z1", "enum": "zs"}}],
    }


def test_map_rejects_unknown_vocabulary_and_bad_references() -> None:
    NodeMap.model_validate(_base_map())
    bad = _base_map()
    bad["enums"]["zs"][2] = "karaoke"
    with pytest.raises(ValidationError, match="karaoke"):
        NodeMap.model_validate(bad)
    both = _base_map()
    both["zones"][0]["state"]["path"] = "PA/Z1"
    with pytest.raises(ValidationError, match="exactly one"):
        NodeMap.model_validate(both)
    orphan = _base_map()
    orphan["lines"] = [{"id": "l1", "zone": "nowhere", "short": {"node": "s=L1"}}]
    with pytest.raises(ValidationError, match="unknown zone"):
        NodeMap.model_validate(orphan)


def test_map_enum_keys_from_yaml_strings() -> None:
    data = yaml.safe_load('{vendor: v, namespace: "urn:v", raw_prefix: v, enums: {zs: {"0": idle, "7": fault}},'
                          ' zones: [{id: z, state: {node: "s=a", enum: zs}}]}')
    m = NodeMap.model_validate(data)
    assert decode_enum(m.enums["zs"], 7, name="state").value == "fault"


def test_numbers_scale_and_range() -> None:
    att = Point(node="i=1", scale=-0.1, range=(-80, 0))
    assert decode_number(att, 200, name="volume").value == -20.0
    out = decode_number(att, 900, name="volume")
    assert out.status == "suspect" and out.reasons == ("volume_out_of_range",) and out.value == -90.0
    assert decode_number(att, -5, name="volume").status == "suspect"  # +0.5 dB: above full scale
    assert decode_number(att, "loud", name="volume").status == "rejected"
    assert decode_number(att, True, name="volume").status == "rejected"
    assert decode_number(att, math.inf, name="volume").status == "rejected"
    temp = Point(node="i=2", scale=0.1, range=(-20, 100))
    hot = decode_number(temp, 1500, name="temperature")
    assert hot.status == "suspect" and hot.reasons == ("temperature_out_of_range",)


def test_bools_and_fail_safe_contacts() -> None:
    present = Point(node="i=1", invert=True)  # "mains present" contact: fault when false
    assert decode_bool(present, False, name="mains").value is True
    assert decode_bool(present, 1, name="mains").value is False
    assert decode_bool(present, 2, name="mains").status == "rejected"


def test_jsonable_flattens_opcua_values() -> None:
    class Localized:
        Text = "hello"

    assert jsonable(Localized()) == "hello"
    assert jsonable([1, b"ab", float("nan")]) == [1, "ab", "nan"]


@pytest.mark.parametrize("mapname", MAPS)
@settings(max_examples=150, deadline=None)
@given(raw=json_values)
def test_decode_never_raises(mapname: str, raw: Any) -> None:
    m = load_map(mapname)
    for key, role, point in m.points():
        out = decode(m, role, point, raw, name=key)
        assert out.status in ("valid", "suspect", "rejected")
        assert (out.value is None) == (out.status == "rejected") or out.value in ("", ())


@pytest.mark.parametrize("mapname", MAPS)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_encode_decode_round_trip(mapname: str, data: st.DataObject) -> None:
    m = load_map(mapname)
    for key, role, point in m.points():
        if point.enum is not None:
            value: Any = data.draw(st.sampled_from(sorted(set(m.enums[point.enum].values()))))
        elif role == "number":
            lo, hi = point.range or (-1000.0, 1000.0)
            value = round(data.draw(st.floats(lo, hi)), 1)
        elif role == "bool":
            value = data.draw(st.booleans())
        elif role == "texts":
            value = tuple(data.draw(st.lists(st.sampled_from(["z1", "z2", "lobby"]), max_size=3)))
        else:
            value = data.draw(st.text("abc-_1", max_size=10))
        back = decode(m, role, point, encode(m, role, point, value), name=key)
        assert back.status == "valid", (key, value, back)
        if isinstance(value, float):
            assert back.value == pytest.approx(value, abs=abs(point.scale))
        else:
            assert back.value == value


@pytest.mark.parametrize("mapname", MAPS)
@settings(max_examples=60, deadline=None)
@given(changes=st.lists(st.tuples(st.integers(0, 40), json_values), max_size=30))
def test_normalizer_never_raises_and_keeps_alarms_paired(mapname: str, changes: list[tuple[int, Any]]) -> None:
    m = load_map(mapname)
    keys = [k for k, _, _ in m.points()]
    norm = PaNormalizer(m)
    opened: dict[str, str] = {}
    for i, raw in changes:
        for d in norm.apply([(keys[i % len(keys)], raw)]):
            assert isinstance(d.payload, PaPayload)
            if d.state == "raised":
                assert d.alarm_id not in opened
                opened[d.alarm_id or ""] = d.type
            elif d.state == "cleared":
                assert opened.pop(d.alarm_id or "") == d.type
    assert {a.alarm_id for a in norm.active_alarms().values()} == set(opened)


def test_raise_clear_and_reconcile_snapshot() -> None:
    m = load_map("courtyard_sim")
    norm = PaNormalizer(m)
    snapshot = {k: encode(m, role, p, v) for k, role, p in m.points()
                for v in [_idle(role, p, m)]}
    norm.apply(snapshot.items())
    raised = norm.apply([("line.l1.status", 1), ("power.mains_fault", True)])
    assert [(d.type, d.state, d.payload.fault) for d in raised] == [  # type: ignore[attr-defined]
        ("pa.line_fault", "raised", "short"), ("pa.mains_fault", "raised", "mains_loss")]
    assert all(d.severity == "major" and d.cls == "fault" for d in raised)
    # short turns into open directly: the short clears (same alarm id), the open is raised
    moved = norm.apply([("line.l1.status", 2)])
    assert [(d.state, d.payload.fault) for d in moved] == [("cleared", "short"), ("raised", "open")]  # type: ignore[attr-defined]
    assert moved[0].alarm_id == raised[0].alarm_id
    # reconnect snapshot: mains came back while away, line still open, new earth fault on l3
    after = dict(snapshot, **{"line.l1.status": 2, "line.l3.status": 3})
    rec = norm.apply(after.items())
    assert [(d.type, d.state) for d in rec] == [("pa.line_fault", "raised"), ("pa.mains_fault", "cleared")]
    assert rec[1].alarm_id == raised[1].alarm_id
    assert norm.apply(after.items()) == []  # same snapshot again: nothing repeated


def _idle(role: str, p: Point, m: NodeMap) -> Any:
    if p.enum is not None:
        return sorted(m.enums[p.enum].values())[0] if role == "source" else (
            "ok" if role in ("amp_fault", "line_status") else "none" if role == "emergency_source" else "idle")
    return {"number": 50.0 if p.range and p.range[0] >= 0 else -20.0, "bool": False, "texts": ()}.get(role, "")


def test_emergency_needs_a_source_and_known_zones() -> None:
    m = load_map("courtyard_sim")
    norm = PaNormalizer(m)
    ok = norm.apply([("emergency.source", 1), ("emergency.zones", "z1,z2"), ("emergency.message", "evac"),
                     ("emergency.active", True)])
    (eb,) = [d for d in ok if d.type == "pa.emergency_broadcast"]
    assert (eb.state, eb.severity, eb.cls, eb.quality.status) == ("raised", "critical", "alarm", "valid")
    assert eb.payload.emergency_source == "fire_linkage" and eb.payload.zones == ("z1", "z2")  # type: ignore[attr-defined]
    cleared = norm.apply([("emergency.active", False)])
    assert cleared[0].state == "cleared" and cleared[0].alarm_id == eb.alarm_id
    bad = norm.apply([("emergency.source", 0), ("emergency.zones", "z9"), ("emergency.active", True)])
    assert bad[0].quality.status == "suspect"
    assert set(bad[0].quality.reasons) == {"emergency_without_source", "unknown_zone"}


def test_out_of_range_is_suspect_and_garbage_is_rejected_and_counted() -> None:
    m = load_map("courtyard_sim")
    rejected: list[str] = []
    norm = PaNormalizer(m, on_reject=rejected.append)
    (vol,) = norm.apply([("zone.z1.volume", 12.0)])
    assert vol.type == "pa.volume" and vol.quality.status == "suspect"
    assert vol.quality.reasons == ("volume_out_of_range",) and vol.payload.volume_db == 12.0  # type: ignore[attr-defined]
    (hot,) = norm.apply([("amp.a1.temperature", 140.0)])
    assert hot.type == "pa.amp_status" and hot.quality.reasons == ("temperature_out_of_range",)
    (junk,) = norm.apply([("line.l2.status", 77)])
    assert junk.quality.status == "rejected" and junk.type == "pa.line_fault" and junk.state == "momentary"
    assert rejected == ["line.l2.status"] and norm.active_alarms() == {}


def test_replay_gives_the_same_events() -> None:
    m = load_map("harborvox_hv2400")
    feed = [("line.lobby-a.earth", True), ("i", 0), ("power.mains_fault", False), ("power.battery_low", True),
            ("zone.lobby.volume", 150), ("line.lobby-a.earth", False)]
    runs = []
    for _ in range(2):
        norm = PaNormalizer(m)
        runs.append([(d.type, d.state, d.payload, d.quality) for d in norm.apply(feed)])
    assert runs[0] == runs[1]
    assert ("pa.mains_fault", "raised") in [(t, s) for t, s, _, _ in runs[0]]  # fail-safe: False = no mains
