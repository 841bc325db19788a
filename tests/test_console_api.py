"""The console's HTTP side against a real gateway and elevator simulator: sessions, CSRF, hostile input,
the live stream's resume, commands through the journaled path, and the users file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from gateway.commands import list_journal
from gateway.config import ConsoleConfig, parse_config
from gateway.console.auth import (
    Throttle,
    hash_password,
    load_users_file,
    verify_password,
)
from gateway.console.server import ConsoleServer
from gateway.errors import ConfigError
from gateway.runtime import Gateway
from tests.console_support import PASSWORDS, client, console_section, lift_rig, login, now
from tests.helpers import base_config, eventually
from tests.servers import InfluxV1, free_port

ROOT = Path(__file__).resolve().parents[1]


def _concrete(path: str) -> str:
    return (path.replace("{name}", "app.js").replace("{device}", "lift-1").replace("{alarm_id}", "x")
            .replace("{op}", "ack"))


async def test_media_paths_stay_inside_the_stores(tmp_path: Path) -> None:
    from gateway.console.live import media_path
    from gateway.media import MediaStore

    store = MediaStore(tmp_path / "media", 10_000)
    store.scan()
    uri = await store.store("cam-1/abc.jpg", b"\xff\xd8picture\xff\xd9")
    (tmp_path / "secret.txt").write_text("no")
    stores = [(store.root, None)]
    assert media_path(uri, stores) == store.root / "cam-1" / "abc.jpg"
    assert media_path(f"file://{store.root}/../secret.txt", stores) is None
    assert media_path(f"file://{tmp_path}/secret.txt", stores) is None
    assert media_path("http://elsewhere/cam-1/abc.jpg", stores) is None
    # a store that publishes under a prefix: the console still serves its own file
    prefixed = [(store.root, "https://media.example/pics")]
    assert media_path("https://media.example/pics/cam-1/abc.jpg", prefixed) == store.root / "cam-1" / "abc.jpg"
    assert media_path("https://media.example/pics/../../secret.txt", prefixed) is None
    (store.root / "cam-1" / "link").symlink_to(tmp_path / "secret.txt")
    assert media_path(f"file://{store.root}/cam-1/link", stores) is None  # a link out of the store


def test_hashes_are_salted_and_verify() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$")  # salted: the same password never hashes the same
    assert verify_password("correct horse", a)
    assert not verify_password("correct hors", a)
    assert not verify_password("correct horse", "scrypt$garbage")
    assert not verify_password("x", "plain")
    with pytest.raises(ValueError):
        hash_password("short")


def test_throttle_counts_per_key_within_the_window() -> None:
    th = Throttle(3, 60)
    for _ in range(3):
        assert th.retry_after("user:a") == 0
        th.failed("user:a", "addr:1")
    assert th.retry_after("user:a") > 0
    assert th.retry_after("addr:1") > 0
    assert th.retry_after("user:b") == 0
    th.succeeded("user:a")
    assert th.retry_after("user:a") == 0
    assert th.retry_after("addr:1") > 0  # a good login never clears the address's failures


def test_config_refuses_a_network_console_without_users(tmp_path: Path) -> None:
    cfg = parse_config(base_config(tmp_path, console={"host": "0.0.0.0", "port": 0}))
    assert isinstance(cfg.console, ConsoleConfig)
    with pytest.raises(ValueError, match="no users"):
        ConsoleServer(Gateway(cfg), cfg.console)
    with pytest.raises(ConfigError, match="time zone"):
        parse_config(base_config(tmp_path, console={"timezone": "Mars/Olympus"}))
    with pytest.raises(ConfigError, match=r"ops\.host"):
        parse_config(base_config(tmp_path, ops={"port": 0}, console={"host": "::1"}))


async def test_every_route_refuses_without_a_session(tmp_path: Path) -> None:
    async with lift_rig(tmp_path) as (_sim, gw, base), client() as s:
        routes = gw.console.routes()
        public = set(ConsoleServer.PUBLIC)
        checked = 0
        for method, path, _ in routes:
            if path in public:
                continue
            async with s.request(method, base + _concrete(path), json={}, allow_redirects=False) as r:
                if path == "/":
                    assert r.status == 303 and r.headers["Location"] == "/login"
                else:
                    assert r.status == 401, (method, path, r.status)
                    assert (await r.json())["error"] == "unauthenticated"
            checked += 1
        assert checked >= 10
        # a forged cookie is no session either
        s.cookie_jar.update_cookies({"courtyard_session": "forged"})
        async with s.get(base + "/api/state") as r:
            assert r.status == 401
        # the public ones answer
        for path in ("/login", "/static/app.js", "/healthz"):
            async with s.get(base + path) as r:
                assert r.status == 200, path
                assert path == "/healthz" or "default-src 'self'" in r.headers["Content-Security-Policy"]
        async with s.get(base + "/static/..%2fserver.py") as r:
            assert r.status == 404
        assert gw.console.counters["unauthenticated"] >= checked - 1


async def test_login_cookie_csrf_and_roles(tmp_path: Path) -> None:
    async with lift_rig(tmp_path) as (sim, gw, base), client() as s:
        async with s.post(base + "/api/login", json={"user": "op", "password": "wrong-password"}) as r:
            assert r.status == 401
        async with s.post(base + "/api/login", json={"user": "op", "password": PASSWORDS["op"]}) as r:
            assert r.status == 200
            cookie = r.headers["Set-Cookie"]
            csrf = (await r.json())["csrf"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        await eventually(lambda: gw.devices["lift-1"].online, 10)
        body = {"device": "lift-1", "name": "hold_door", "args": {"seconds": 5}}
        async with s.post(base + "/api/commands", json=body) as r:  # no token
            assert r.status == 403 and (await r.json())["error"] == "bad_csrf"
        async with s.post(base + "/api/commands", json=body, headers={"X-CSRF-Token": csrf + "x"}) as r:
            assert r.status == 403
        async with s.post(base + "/api/commands", json=body,
                          headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}) as r:
            assert r.status == 403 and (await r.json())["error"] == "bad_origin"
        assert sim.commands == []  # nothing reached the lift
        async with s.post(base + "/api/commands", json=body, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200, await r.text()
            res = await r.json()
        assert res["state"] == "accepted"
        await eventually(lambda: sim.elevators[1].hold_until is not None, 10)  # the lift acted
        await gw.commands.wait_idle()
        rows = list_journal(tmp_path / "outbox.db")
        assert [(r.id, r.requester, r.requested_by, r.state) for r in rows] == [
            (res["id"], "console:op", "op", "succeeded")]  # the audit trail: who commanded what
        # a viewer looks only
        async with client() as v:
            vcsrf = await login(v, base, "viewer")
            async with v.get(base + "/api/state") as r:
                assert r.status == 200
            async with v.post(base + "/api/commands", json=body, headers={"X-CSRF-Token": vcsrf}) as r:
                assert r.status == 403 and (await r.json())["error"] == "forbidden"
        # logout ends the session
        async with s.post(base + "/api/logout", json={}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200
        async with s.get(base + "/api/state") as r:
            assert r.status == 401


async def test_commands_outside_the_allowlist_are_rejected(tmp_path: Path) -> None:
    cfg = console_section()
    async with lift_rig(tmp_path, console=cfg) as (sim, _gw, base), client() as s:
        csrf = await login(s, base, "op")
        # `admin` is allowed by the rig; a command the lift does not know is rejected with its reason
        async with s.post(base + "/api/commands", json={"device": "lift-1", "name": "fly", "args": {}},
                          headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 409 and (await r.json())["reason"] == "unknown_command"
        async with s.post(base + "/api/commands", json={"device": "lift-9", "name": "call", "args": {"floor": 1}},
                          headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 409 and (await r.json())["reason"] == "unknown_device"
    # the allowlist decides who may: op is not allowed in this one
    async with lift_rig(tmp_path / "b", commands={"allow": [{"requesters": ["console:admin"], "devices": ["*"],
                                                               "commands": ["*"]}]}) as (sim, _gw, base), client() as s:
        csrf = await login(s, base, "op")
        async with s.post(base + "/api/commands", json={"device": "lift-1", "name": "call", "args": {"floor": 2}},
                          headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 409 and (await r.json())["reason"] == "not_allowed:console:op"
        assert sim.commands == []


async def test_hostile_bodies_are_refused_and_nothing_else_is_disturbed(tmp_path: Path) -> None:
    async with lift_rig(tmp_path) as (_sim, gw, base), client() as s:
        csrf = await login(s, base)
        h = {"X-CSRF-Token": csrf}
        url = base + "/api/commands"
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"data": b"{not json", "headers": {**h, "Content-Type": "application/json"}}, 400, "bad_json"),
            ({"data": b"[1, 2]", "headers": {**h, "Content-Type": "application/json"}}, 400, "bad_json"),
            ({"data": b"\xff\xfe", "headers": {**h, "Content-Type": "application/json"}}, 400, "bad_json"),
            ({"data": b"device=lift-1", "headers": {**h, "Content-Type": "application/x-www-form-urlencoded"}},
             415, "unsupported_media_type"),
            ({"data": b"x" * 20000, "headers": {**h, "Content-Type": "application/json"}}, 413, "too_large"),
            ({"json": {"device": 5, "name": None}, "headers": h}, 400, "bad_request"),
            ({"json": {"device": "lift-1", "name": "call", "args": [1]}, "headers": h}, 400, "bad_request"),
        ]
        for kwargs, status, error in cases:
            async with s.post(url, **kwargs) as r:
                assert r.status == status, (kwargs.get("data", b"")[:20], await r.text())
                assert (await r.json())["error"] == error
        # a chunked body with no declared length, over the limit
        async def chunks() -> Any:
            for _ in range(40):
                yield b"x" * 1000

        async with s.post(url, data=chunks(), headers={**h, "Content-Type": "application/json"}) as r:
            assert r.status == 413
        async with s.post(base + "/api/login", data=b"user=op&password=x",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 415  # a cross-site form cannot log anybody in
        async with s.post(base + "/api/login", json={"user": "op", "password": PASSWORDS["op"]},
                          headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403  # nor can a cross-site script
        for q in ("since=yesterday", "limit=many", "device=" + "d" * 200):
            async with s.get(base + "/api/events?" + q) as r:
                assert r.status == 400, q
        async with s.get(base + "/media?uri=" + "file:///etc/passwd") as r:
            assert r.status == 404
        async with s.get(base + "/media?uri=" + "file:///" + "../" * 20 + "etc/passwd") as r:
            assert r.status == 404
        async with s.get(base + "/api/state", headers={"X-Junk": "j" * 20000}) as r:
            assert r.status in (400, 431)  # a head over the limit is refused by the HTTP parser
        async with s.get(base + "/api/devices/nope/history") as r:
            assert r.status == 404
        # still serving
        async with s.get(base + "/api/state") as r:
            assert r.status == 200
        assert gw.console.counters["bad_json"] == 3 and gw.console.counters["too_large"] == 2


async def test_login_throttling(tmp_path: Path) -> None:
    async with lift_rig(tmp_path, console=console_section(login_attempts=3, login_window_s=60)) as (_s, gw, base), \
            client() as s:
        for _ in range(3):
            async with s.post(base + "/api/login", json={"user": "op", "password": "guess-guess"}) as r:
                assert r.status == 401
        async with s.post(base + "/api/login", json={"user": "op", "password": PASSWORDS["op"]}) as r:
            assert r.status == 429  # even the right password waits: the guesser cannot tell
            assert int(r.headers["Retry-After"]) > 0
        async with s.post(base + "/api/login", json={"user": "viewer", "password": PASSWORDS["viewer"]}) as r:
            assert r.status == 429  # the address is throttled as well
        assert gw.console.counters["throttled"] == 2


@pytest.mark.slow
async def test_slow_clients_are_cut_off(tmp_path: Path) -> None:
    section = console_section(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=4)
    async with lift_rig(tmp_path, console=section) as (_sim, gw, base), client() as s:
        port = gw.console.port
        # a head that never completes
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/state HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped
        writer.close()
        # a body that trickles
        csrf = await login(s, base)
        cookie = f"courtyard_session={s.cookie_jar.filter_cookies(URL(base))['courtyard_session'].value}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"POST /api/commands HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                      f"X-CSRF-Token: {csrf}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{")
                     .encode())
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
        writer.close()
        # a flood of idle connections from one address is capped; a request still gets through later
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
        answers = [await asyncio.wait_for(r.read(), 5) for r, _ in held]
        assert any(a.startswith(b"HTTP/1.1 503") for a in answers)  # turned away at once
        for _, w in held:
            w.close()
        await eventually(lambda: not gw.console._guard.conns, 5)
        async with s.get(base + "/api/state") as r:
            assert r.status == 200
        assert gw.console.counters["header_timeout"] >= 1 and gw.console.counters["timeout"] == 1


async def test_stream_resumes_without_losing_or_repeating(tmp_path: Path) -> None:
    async with lift_rig(tmp_path, book=True) as (sim, gw, base), client() as s:
        await login(s, base)
        async with s.get(base + "/api/state") as r:
            snap = await r.json()
        await eventually(lambda: gw.devices["lift-1"].online, 10)

        async def read(after: str | None, headers: dict[str, str], until: Any, limit: float = 10) -> list[
                tuple[str, dict[str, Any] | str]]:
            got: list[tuple[str, Any]] = []
            url = base + "/api/stream" + (f"?after={after}" if after else "")
            async with s.get(url, headers=headers) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                ident, event = "", "message"
                async with asyncio.timeout(limit):
                    while not until(got):
                        line = (await r.content.readline()).decode().rstrip("\n")
                        if line.startswith("id: "):
                            ident = line[4:]
                        elif line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            got.append((ident, json.loads(line[6:]) if event == "message" else event))
                            event = "message"
            return got

        def alarm_ids(got: list[tuple[str, Any]]) -> list[str]:
            return [m["alarm"]["alarm_id"] for _, m in got if isinstance(m, dict) and m.get("t") == "alarm"]

        await sim.inject("alarm_button", device_id=1)
        first = await read(snap["cursor"], {}, alarm_ids)
        last_id = first[-1][0]
        # while the browser is away: more happens
        await sim.inject("fault_code", 7, device_id=1)
        await eventually(lambda: len(gw.console.live.alarms) >= 2, 15)
        gone = gw.console.live.cursor
        second = await read(None, {"Last-Event-ID": last_id},
                            lambda g: g and int(g[-1][0].split(":")[1]) >= gone)
        numbers = [int(i.split(":")[1]) for i, _ in first + second]
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), "no message lost, none repeated"
        assert set(alarm_ids(first + second)) == set(gw.console.live.alarms)
        # an id from another run (or garbage) gets a reset: the page reloads its snapshot
        other = await read(None, {"Last-Event-ID": "deadbeef:3"}, lambda g: g)
        assert other[0][1] == "reset"


async def test_alarm_operations_go_through_the_alarm_book(tmp_path: Path) -> None:
    async with lift_rig(tmp_path, book=True) as (sim, gw, base), client() as s:
        csrf = await login(s, base)
        await sim.inject("alarm_button", device_id=1)
        alarm = await eventually(lambda: next(iter(gw.console.live.alarms.values()), None), 20)
        url = f"{base}/api/alarms/{alarm.alarm_id}"
        async with s.post(url + "/ack", json={"comment": "on my way"}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["alarm"]["state"] == "active_acked"
        async with s.post(url + "/ack", json={}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 409 and (await r.json())["reason"] == "not_unacknowledged"
        async with s.post(url + "/shelve", json={"until": "tomorrow"}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 400
        async with s.post(url + "/explode", json={}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 404
        book = gw.alarm_book  # type: ignore[attr-defined]
        assert book.ops == [(alarm.alarm_id, "ack", "console:op", "on my way"),
                            (alarm.alarm_id, "ack", "console:op", None)]
        async with s.get(base + "/api/state") as r:
            assert [a["state"] for a in (await r.json())["alarms"]] == ["active_acked"]


async def test_alarms_the_book_does_not_manage_still_show(tmp_path: Path) -> None:
    async with lift_rig(tmp_path, book=("alarm", "fault"), missing=1) as (sim, gw, base), client() as s:
        live = gw.console.live
        await sim.inject("alarm_button", device_id=1)
        await eventually(lambda: {a.type for a in live.alarms.values()} == {"elevator.alarm_button", "device.offline"},
                         20)
        managed = {a.type: a.managed for a in live.alarms.values()}
        assert managed == {"elevator.alarm_button": True, "device.offline": False}
        await login(s, base)
        async with s.get(base + "/api/state") as r:
            state = await r.json()
        assert state["lifecycle"] is True
        assert [(a["type"], a["managed"]) for a in state["alarms"]] == [  # critical first, then major
            ("elevator.alarm_button", True), ("device.offline", False)]


async def test_without_a_lifecycle_the_queue_follows_raise_and_clear(tmp_path: Path) -> None:
    async with lift_rig(tmp_path) as (sim, gw, base), client() as s:
        csrf = await login(s, base)
        await sim.inject("alarm_button", device_id=1)
        alarm = await eventually(lambda: next(iter(gw.console.live.alarms.values()), None), 20)
        assert alarm.type == "elevator.alarm_button" and alarm.location == {"building": "4", "unit": "1"}
        async with s.post(f"{base}/api/alarms/{alarm.alarm_id}/ack", json={}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 501
        await sim.clear("alarm_button", device_id=1)
        await eventually(lambda: not gw.console.live.alarms, 20)


async def test_event_log_filters_and_csv(tmp_path: Path) -> None:
    async with lift_rig(tmp_path) as (sim, gw, base), client() as s:
        await login(s, base)
        await sim.inject("alarm_button", device_id=1)
        await eventually(lambda: gw.console.live.alarms, 20)
        async with s.get(base + "/api/events", params={"type": "elevator.alarm_button",
                                                       "severity": "critical"}) as r:
            rows = (await r.json())["events"]
        assert rows and {e["type"] for e in rows} == {"elevator.alarm_button"}
        async with s.get(base + "/api/events", params={"kind": "camera"}) as r:
            assert (await r.json())["events"] == []
        local = now().astimezone().replace(tzinfo=None).isoformat(timespec="minutes")  # no zone: site time
        async with s.get(base + "/api/events", params={"until": "2000-01-01T00:00"}) as r:
            assert (await r.json())["events"] == []
        async with s.get(base + "/api/events.csv", params={"device": "lift-1", "since": local[:10] + "T00:00"}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
            assert "attachment" in r.headers["Content-Disposition"]
            text = (await r.text()).lstrip("\ufeff")
        header, *lines = text.splitlines()
        assert header.startswith("time,device,kind,class,type,severity")
        assert any(",elevator.alarm_button," in line for line in lines)


async def test_console_shares_the_ops_port(tmp_path: Path) -> None:
    port = free_port()
    ops = {"port": port, "token": "ops-secret-token"}
    section = console_section()
    del section["port"]
    async with lift_rig(tmp_path, console=section, ops=ops) as (_sim, gw, _base), client() as s:
        base = f"http://127.0.0.1:{port}"
        assert gw.console.port == port and gw.console.shared
        await login(s, base)  # no bearer token needed: the console has its sessions
        async with s.get(base + "/api/state") as r:
            assert r.status == 200
        async with s.get(base + "/metrics") as r:
            assert r.status == 401  # the ops routes keep their token
        async with s.get(base + "/metrics", headers={"Authorization": "Bearer ops-secret-token"}) as r:
            assert r.status == 200
            text = await r.text()
        assert "courtyard_console_sessions 1.0" in text
        assert "courtyard_console_refusals_total{" not in text  # none refused yet
        async with client() as anon, anon.get(base + "/api/events") as r:
            assert r.status == 401
        async with s.get(base + "/metrics", headers={"Authorization": "Bearer ops-secret-token"}) as r:
            assert 'courtyard_console_refusals_total{reason="unauthenticated"} 1.0' in await r.text()


@pytest.mark.slow
def test_users_cli_manages_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"

    def run(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "COURTYARD_PASSWORD"}
        if password is not None:
            env["COURTYARD_PASSWORD"] = password
        return subprocess.run([sys.executable, "-m", "gateway", "users", *args, "--file", str(path)],
                              capture_output=True, text=True, cwd=ROOT, env=env, check=False,
                              stdin=subprocess.DEVNULL)

    assert run("add", "alice", "--role", "admin", password="alice-password-1").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "alice-password-1" not in path.read_text()
    (alice,) = load_users_file(path)
    assert alice.role == "admin" and verify_password("alice-password-1", alice.password_hash.get_secret_value())
    assert run("add", "alice", password="another-pass-2").returncode == 1  # exists
    assert run("add", "bob", password="short").returncode != 0
    assert run("add", "bad name!", password="long-enough-1").returncode == 2
    assert run("passwd", "alice", password="alice-password-2").returncode == 0
    (alice,) = load_users_file(path)
    assert verify_password("alice-password-2", alice.password_hash.get_secret_value())
    assert re.search(r"alice\tadmin", run("list").stdout)
    assert run("remove", "alice").returncode == 0
    assert load_users_file(path) == []
    assert run("remove", "alice").returncode == 1


async def test_users_file_is_read_at_login_and_logs_out_removed_users(tmp_path: Path) -> None:
    from gateway.config import ConsoleUser
    from gateway.console.auth import save_users_file

    users = tmp_path / "users.yaml"
    save_users_file(users, [ConsoleUser.model_validate(
        {"name": "carol", "role": "operator", "password_hash": hash_password("carol-password")})])
    users.chmod(0o644)  # loosened by hand: the gateway makes it private again
    section = console_section(users_file=str(users))
    async with lift_rig(tmp_path, console=section) as (_sim, _gw, base), client() as s:
        async with s.post(base + "/api/login", json={"user": "carol", "password": "carol-password"}) as r:
            assert r.status == 200
        assert stat.S_IMODE(users.stat().st_mode) == 0o600
        save_users_file(users, [])
        os.utime(users, (1, 1))  # a different mtime even within the same clock tick
        async with s.get(base + "/api/state") as r:
            assert r.status == 401  # removed: logged out
        async with s.post(base + "/api/login", json={"user": "carol", "password": "carol-password"}) as r:
            assert r.status == 401


@pytest.mark.slow
async def test_device_chart_reads_influxdb_and_falls_back_to_the_local_history(tmp_path: Path,
                                                                              influx_v1: InfluxV1) -> None:
    db = "console_series"
    influx_v1.query_sync(f"CREATE DATABASE {db}")
    influx = {"url": influx_v1.url, "api": "v1", "database": db}
    async with lift_rig(tmp_path, influx=influx) as (sim, gw, base), client() as s:
        await login(s, base)
        await gw.commands.submit("elevator", "lift-1", "call", {"id": "c1", "args": {"floor": 4}},
                                 requester="console:op")
        await eventually(lambda: sim.elevators[1].floor == 4, 30)

        async def series() -> dict[str, Any] | None:
            async with s.get(base + "/api/devices/lift-1/series") as r:
                got: dict[str, Any] = await r.json()
            floors = {p["payload"].get("floor") for p in got["points"]}
            return got if {1, 4} <= floors else None

        data = await eventually(series, 15, interval=0.3)  # once the sink has written the car's arrival
        assert data["source"] == "influx"
        assert all(p["time"].endswith("Z") for p in data["points"])
        # a device id that tries to break out of its quotes finds nothing, and breaks nothing
        from gateway.console.series import influx_points

        assert await influx_points(gw.config.influx, "elevator", "x' OR device =~ /.*/ --", data_since()) == []
    # InfluxDB gone: the chart says so and draws the local history
    async with lift_rig(tmp_path / "b", influx={**influx, "url": f"http://127.0.0.1:{free_port()}",
                                                "timeout_s": 1}) as (_sim, gw, base), client() as s:
        await login(s, base)
        await eventually(lambda: gw.devices["lift-1"].online, 10)
        async with s.get(base + "/api/devices/lift-1/series") as r:
            data = await r.json()
        assert data["source"] == "local" and "unreachable" in data["problem"]
        assert any("floor" in p["payload"] for p in data["points"])


def data_since() -> Any:
    from datetime import timedelta

    return now() - timedelta(hours=1)


def test_gateway_without_console_section_serves_none(tmp_path: Path) -> None:
    cfg = parse_config(base_config(tmp_path))
    assert cfg.console is None
    assert Gateway(cfg).console is None


def test_demo_says_when_its_console_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "gateway", "demo", "--headless", "--duration", "1",
                              "--console-port", str(port), "--data", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert res.returncode == 2
    assert f"127.0.0.1:{port} is taken" in res.stderr and "--console-port" in res.stderr
