"""Drivers' data files (PA node maps, access-gate code tables) report problems as `file:line: path: message`.

An integrator adds a model by writing one of these files; a typo must point at its line, like the config.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.tables import TABLE_DIR
from drivers.opcua_pa.config import OpcUaPaConfig
from drivers.opcua_pa.nodemap import MAPS_DIR


def _break(src: Path, dst: Path, old: str, new: str) -> int:
    """Copy `src` to `dst` with the first `old` replaced by `new`; the 1-based line it was on."""
    text = src.read_text(encoding="utf-8")
    assert old in text
    dst.write_text(text.replace(old, new, 1), encoding="utf-8")
    return text[: text.index(old)].count("\n") + 1


def test_a_broken_pa_node_map_is_named_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "vendor.yaml"
    line = _break(MAPS_DIR / "courtyard_sim.yaml", bad, "range: [-80, 0]", "range: [-80, loud]")
    with pytest.raises(ValidationError) as err:
        OpcUaPaConfig.model_validate({"id": "pa-1", "driver": "opcua_pa", "url": "opc.tcp://127.0.0.1:4840",
                                      "map": str(bad)})
    assert f"{bad}:{line}: zones[0].volume.range[1]: Input should be a valid number" in err.value.errors()[0]["msg"]


def test_a_missing_pa_node_map_names_the_shipped_ones() -> None:
    with pytest.raises(ValidationError, match=r"not found.*courtyard_sim"):
        OpcUaPaConfig.model_validate({"id": "pa-1", "driver": "opcua_pa", "url": "opc.tcp://127.0.0.1:4840",
                                      "map": "no_such_vendor"})


def test_a_broken_gate_code_table_is_named_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "table.yaml"
    line = _break(TABLE_DIR / "cogp.yaml", bad, "{code: 0x0012, type: door.forced_open, class: alarm,",
                  "{code: 0x0012, type: door.forced_open, class: alarum,")
    with pytest.raises(ValidationError) as err:
        BleAccessGateConfig.model_validate({"id": "gate-1", "driver": "ble_access_gate", "address": "AA:BB:CC:DD:EE:01",
                                            "credential_key": "k" * 32, "code_table": str(bad)})
    assert f"{bad}:{line}: events[" in err.value.errors()[0]["msg"]
