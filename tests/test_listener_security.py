"""The shared HTTP push listener under hostile clients, over real sockets on loopback.

Each test runs a `PushListener` with a small generic endpoint (no plate logic), so what is
tested is the listener: auth before the body, bounded bytes in flight, replay refusal, total
rates, URL tokens, Digest, source allowlists and the loopback-by-default rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from drivers.http_plate_reader.config import HttpPlateReaderConfig
from drivers.http_plate_reader.listener import Policy, PushListener, PushReply, PushRequest, sign
from drivers.http_plate_reader.listener_config import (
    Auth,
    DigestAuth,
    HmacAuth,
    ListenerSettings,
    NoAuth,
    TokenAuth,
    UrlTokenAuth,
)
from gateway.config import load_config_text
from gateway.errors import ConfigError
from tests.helpers import eventually

TOKEN = "bearer-token-123"
URL_TOKEN = "AbCdEf0123456789xyz"


class Sink:
    """A generic endpoint: keeps bodies, counts refusals per reason."""

    def __init__(self, auth: Auth | None = None, **policy: Any) -> None:
        settings = policy.pop("settings", ListenerSettings())
        self.policy = Policy(
            auth or NoAuth(), policy.pop("max_body_bytes", 8 * 1024 * 1024), policy.pop("rate_per_s", 1000.0),
            policy.pop("burst", 1000), settings=settings, **policy,
        )
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.refusals: Counter[str] = Counter()

    async def handle(self, request: PushRequest) -> PushReply:
        self.bodies.append(request.body)
        self.paths.append(request.path)
        return PushReply(200, b'{"ok": true}')

    def refused(self, status: int, error: str, reason: str) -> None:
        self.refusals[error] += 1


@contextlib.asynccontextmanager
async def serving(sink: Sink, path: str = "/push/cam", host: str = "127.0.0.1") -> AsyncIterator[PushListener]:
    listener = await PushListener(host, 0, sink.policy.settings).start()
    try:
        listener.register(path, sink)
        yield listener
    finally:
        await listener.aclose()


def url(listener: PushListener, path: str = "/push/cam") -> str:
    return f"http://127.0.0.1:{listener.port}{path}"


async def raw_exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float = 5.0) -> bytes:
    """Send `head` (and `body`), return what the server answers before closing or going quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
        return data
    finally:
        writer.close()


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


# ------------------------------------------------------------------ loopback by default, consent off loopback


def _yaml(host: str, auth: str, extra: str = "") -> str:
    return f"""site: s
mqtt: {{enabled: false}}
devices:
  - id: cam
    driver: http_plate_reader
    listen_host: "{host}"
    auth: {auth}
{extra}"""


def test_default_bind_address_is_loopback() -> None:
    cfg = HttpPlateReaderConfig.model_validate({"id": "cam", "driver": "http_plate_reader"})
    assert cfg.listen_host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "gateway.local"])
def test_network_address_without_auth_is_a_config_error(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(_yaml(host, "{mode: none}"), source="site.yaml")
    (problem,) = info.value.problems
    assert problem.line == 4 and problem.path == "devices[0]"
    assert "reachable from the network" in problem.message and "i_understand" in problem.message


@pytest.mark.parametrize(
    ("host", "auth", "extra"),
    [
        ("127.0.0.1", "{mode: none}", ""),
        ("localhost", "{mode: none}", ""),
        ("0.0.0.0", "{mode: none, i_understand_anyone_on_the_network_can_push: true}", ""),
        ("0.0.0.0", "{mode: none}", "    allow_sources: [192.168.10.0/24]\n"),
        ("0.0.0.0", "{mode: token, token: long-enough-token}", ""),
        ("0.0.0.0", "{mode: digest, username: cam, password: pw}", ""),
    ],
)
def test_network_address_with_auth_allowlist_or_consent_validates(host: str, auth: str, extra: str) -> None:
    assert load_config_text(_yaml(host, auth, extra)).devices[0].listen_host == host  # type: ignore[attr-defined]


async def test_listener_on_network_address_refuses_unauthenticated_endpoint_at_start() -> None:
    listener = await PushListener("0.0.0.0", 0).start()
    try:
        with pytest.raises(ValueError, match="reachable from the network"):
            listener.register("/open", Sink(NoAuth()))
        listener.register("/consented", Sink(NoAuth(i_understand_anyone_on_the_network_can_push=True)))
        listener.register("/token", Sink(TokenAuth(mode="token", token=TOKEN)))
        assert listener.paths == ["/consented", "/token"]
    finally:
        await listener.aclose()


# ------------------------------------------------------------------ auth before the body, bytes in flight


async def test_bearer_upload_refused_401_without_reading_the_body() -> None:
    sink = Sink(TokenAuth(mode="token", token=TOKEN))
    async with serving(sink) as listener:
        head = (
            f"POST /push/cam HTTP/1.1\r\nHost: x\r\nX-Auth-Token: wrong-token-1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {4 * 1024 * 1024}\r\n\r\n"
        ).encode()
        # Headers only: the body never comes, so only a refusal on the headers can answer.
        answer = await raw_exchange(listener.port, head, timeout=5)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b'"error": "unauthorized"' in answer and b"wrong X-Auth-Token" in answer
        assert listener.in_flight == 0 and sink.bodies == []
        assert sink.refusals["unauthorized"] == 1


async def test_expect_100_continue_refused_before_the_body() -> None:
    sink = Sink(TokenAuth(mode="token", token=TOKEN))
    async with serving(sink) as listener:
        head = (
            b"POST /push/cam HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
        )
        answer = await raw_exchange(listener.port, head, timeout=5)
        assert answer.startswith(b"HTTP/1.1 401") and b"100 Continue" not in answer


async def test_bytes_in_flight_over_budget_answer_503() -> None:
    settings = ListenerSettings(max_body_bytes_in_flight=1_000_000)
    sink = Sink(HmacAuth(mode="hmac", secret="hmac-secret-1"), settings=settings)
    async with serving(sink) as listener:
        _reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        # A slow upload: 700 kB of its 900 kB sent, then nothing. Only what arrived is held.
        writer.write(b"POST /push/cam HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n" + b"x" * 700_000)
        await writer.drain()
        await eventually(lambda: listener.in_flight == 700_000, timeout=5)
        async with aiohttp.ClientSession() as session, session.post(url(listener), data=b"y" * 400_000) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "2"
            doc = await resp.json()
            assert doc["error"] == "busy" and "in flight" in doc["reason"]
        writer.close()
        await eventually(lambda: listener.in_flight == 0, timeout=5)  # the stalled upload's share comes back
        assert sink.refusals["busy"] == 1


# ------------------------------------------------------------------ HMAC replay


async def test_hmac_replay_of_the_same_signed_push_is_refused() -> None:
    sink = Sink(HmacAuth(mode="hmac", secret="hmac-secret-1"))
    async with serving(sink) as listener, aiohttp.ClientSession() as session:
        body = b'{"plate": "A"}'
        stamp = str(int(time.time()))
        headers = {"X-Timestamp": stamp, "X-Signature": sign("hmac-secret-1", stamp, body)}
        async with session.post(url(listener), data=body, headers=headers) as first:
            assert first.status == 200
        async with session.post(url(listener), data=body, headers=headers) as replay:
            assert replay.status == 409
            assert (await replay.json())["error"] == "replayed"
        fresh = str(int(time.time()) + 1)  # the same body signed anew is a new push
        headers = {"X-Timestamp": fresh, "X-Signature": sign("hmac-secret-1", fresh, body)}
        async with session.post(url(listener), data=body, headers=headers) as again:
            assert again.status == 200
    assert sink.bodies == [body, body]
    assert sink.refusals == {"replayed": 1}


# ------------------------------------------------------------------ total rate across sources


async def test_total_rate_limit_holds_across_many_source_addresses() -> None:
    sink = Sink(rate_per_s=100.0, burst=5, total_rate_per_s=1.0, total_burst=10)
    statuses: Counter[int] = Counter()
    async with serving(sink) as listener:

        async def push(i: int) -> None:
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{i}", 0))
            async with aiohttp.ClientSession(connector=connector) as session, session.post(url(listener)) as resp:
                statuses[resp.status] += 1

        started = time.monotonic()
        await asyncio.gather(*(push(i) for i in range(2, 252)))
        refilled = (time.monotonic() - started) * 1.0
    assert sum(statuses.values()) == 250
    assert 10 <= statuses[200] <= 10 + refilled + 1, statuses  # the burst, plus what refilled meanwhile
    assert statuses[429] == 250 - statuses[200]
    assert sink.refusals["rate_limited_total"] == statuses[429]


async def test_listener_wide_request_rate_limit() -> None:
    sink = Sink(settings=ListenerSettings(max_requests_per_s=1.0, requests_burst=3))
    async with serving(sink) as listener, aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(6):
            async with session.post(url(listener), data=b"{}") as resp:
                statuses.append(resp.status)
        assert statuses[:3] == [200, 200, 200] and statuses.count(429) >= 2
        assert listener.counters["rate_limited_total"] == statuses.count(429)


# ------------------------------------------------------------------ auth cameras can do


async def test_url_token_in_path_or_query_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(UrlTokenAuth(mode="url_token", token=URL_TOKEN), settings=ListenerSettings(access_log=True))
    caplog.set_level(logging.DEBUG)
    async with serving(sink) as listener, aiohttp.ClientSession() as session:
        base = url(listener)
        async with session.post(f"{base}/{URL_TOKEN}", data=b"1") as resp:
            assert resp.status == 200
        async with session.post(f"{base}?token={URL_TOKEN}", data=b"2") as resp:
            assert resp.status == 200
        async with session.post(f"{base}/{URL_TOKEN}x", data=b"3") as resp:
            assert resp.status == 401 and (await resp.json())["reason"] == "wrong token"
        async with session.post(f"{base}?token=nope{URL_TOKEN}", data=b"4") as resp:
            assert resp.status == 401
        async with session.post(base, data=b"5") as resp:
            assert resp.status == 401 and "missing token" in (await resp.json())["reason"]
        async with session.post(f"{base}/{URL_TOKEN}/more", data=b"6") as resp:  # a camera given a wrong URL
            assert resp.status == 404
    assert sink.bodies == [b"1", b"2"]
    assert sink.paths == ["/push/cam", "/push/cam"]  # the endpoint never sees the token either
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/push/cam" in logged  # access log lines were written...
    assert URL_TOKEN not in logged  # ...without the token, right or wrong


def _digest_auth(**extra: Any) -> DigestAuth:
    return DigestAuth(mode="digest", username="cam", password="s3cret-pw", **extra)


async def test_digest_md5_with_stdlib_urllib_client() -> None:
    sink = Sink(_digest_auth(algorithms=["MD5"]))
    async with serving(sink) as listener:
        target = url(listener)

        def post(password: str) -> int:
            manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            manager.add_password(None, target, "cam", password)
            opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(manager))
            try:
                with opener.open(urllib.request.Request(target, data=b'{"n": 1}', method="POST"), timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await asyncio.to_thread(post, "s3cret-pw") == 200
        assert await asyncio.to_thread(post, "wrong") == 401
    assert sink.bodies == [b'{"n": 1}']
    assert sink.refusals["unauthorized"] >= 2  # each client's first, unauthenticated try, and the wrong one


async def test_digest_sha256_with_aiohttp_middleware_and_replayed_header_refused() -> None:
    from aiohttp import DigestAuthMiddleware

    sink = Sink(_digest_auth(algorithms=["SHA-256", "MD5"]))
    sent: list[str] = []

    async def keep_header(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if "Authorization" in req.headers:
            sent.append(req.headers["Authorization"])
        return await handler(req)

    async with serving(sink) as listener:
        digest = DigestAuthMiddleware("cam", "s3cret-pw")
        async with aiohttp.ClientSession(middlewares=(digest, keep_header)) as session:
            for n in range(3):  # later pushes reuse the nonce with a growing nonce count
                async with session.post(url(listener), data=f"{n}".encode()) as resp:
                    assert resp.status == 200
        assert sent and "algorithm=SHA-256" in sent[0]
        replay = {"Authorization": sent[-1]}  # a captured header sent again: its nonce count was used
        async with aiohttp.ClientSession() as plain, plain.post(url(listener), data=b"r", headers=replay) as resp:
            assert resp.status == 401
            assert "already used" in (await resp.json())["reason"]
            challenges = resp.headers.getall("WWW-Authenticate")
            assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["SHA-256", "MD5"]
    assert sink.bodies == [b"0", b"1", b"2"]


async def test_digest_expired_nonce_is_stale() -> None:
    sink = Sink(_digest_auth(nonce_ttl_s=0.2))
    async with serving(sink) as listener, aiohttp.ClientSession() as session:
        async with session.post(url(listener), data=b"x") as first:
            assert first.status == 401
            challenge = first.headers["WWW-Authenticate"]
        await asyncio.sleep(0.4)
        nonce = challenge.split('nonce="')[1].split('"')[0]
        import hashlib

        def h(s: str) -> str:
            return hashlib.md5(s.encode()).hexdigest()

        response = h(f"{h('cam:courtyard:s3cret-pw')}:{nonce}:00000001:abc:auth:{h('POST:/push/cam')}")
        header = (f'Digest username="cam", realm="courtyard", nonce="{nonce}", uri="/push/cam", qop=auth, '
                  f'nc=00000001, cnonce="abc", response="{response}", algorithm=MD5')
        async with session.post(url(listener), data=b"x", headers={"Authorization": header}) as late:
            assert late.status == 401 and "stale=true" in late.headers["WWW-Authenticate"]
            assert (await late.json())["reason"] == "Digest nonce expired"
    assert sink.bodies == []


async def test_source_allowlist() -> None:
    import ipaddress

    sink = Sink(allow_sources=(ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.0.0.0/8")))
    async with serving(sink) as listener:
        for source, expected in (("127.0.0.2", 200), ("127.0.0.3", 403)):
            connector = aiohttp.TCPConnector(local_addr=(source, 0))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(url(listener), data=source.encode()) as resp,
            ):
                assert resp.status == expected
                if expected == 403:
                    assert (await resp.json()) == {
                        "error": "source_not_allowed", "reason": "127.0.0.3 is not in allow_sources"
                    }
    assert sink.bodies == [b"127.0.0.2"]
    assert sink.refusals == {"source_not_allowed": 1}


def test_url_token_and_digest_config_from_yaml() -> None:
    text = _yaml("0.0.0.0", f"{{mode: url_token, token: {URL_TOKEN}}}")
    assert load_config_text(text).devices[0].auth.mode == "url_token"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="at least 16"):
        load_config_text(_yaml("0.0.0.0", "{mode: url_token, token: short}"))
    with pytest.raises(ConfigError, match="algorithms"):
        load_config_text(_yaml("0.0.0.0", "{mode: digest, username: c, password: p, algorithms: [SHA-1]}"))


# ------------------------------------------------------------------ connections: caps and head timeout


async def _idle(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def test_per_source_and_total_connection_caps() -> None:
    settings = ListenerSettings(max_connections=4, max_connections_per_source=2, header_timeout_s=30)
    sink = Sink(settings=settings)
    async with serving(sink) as listener:
        held = [await _idle("127.0.0.2", listener.port) for _ in range(2)]
        await eventually(lambda: listener.open_connections == 2, timeout=5)
        reader, writer = await _idle("127.0.0.2", listener.port)  # a third from the same source
        refused = await asyncio.wait_for(reader.read(), 5)
        assert refused.startswith(b"HTTP/1.1 503") and b"from 127.0.0.2" in refused
        writer.close()
        held += [await _idle("127.0.0.3", listener.port) for _ in range(2)]
        await eventually(lambda: listener.open_connections == 4, timeout=5)
        # At the total cap, a source with nothing open takes the slot of the oldest idle connection of
        # a source holding the most, so a camera gets in through a flood from many addresses...
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.4", 0))
        async with aiohttp.ClientSession(connector=connector) as session, session.post(url(listener)) as resp:
            assert resp.status == 200
        assert await asyncio.wait_for(held[0][0].read(), 5) == b""  # the oldest was dropped
        newcomer = await _idle("127.0.0.5", listener.port)  # takes the slot the camera left
        await eventually(lambda: listener.open_connections == 4, timeout=5)
        # ...while a source already holding as much as the others does not.
        late = await _idle("127.0.0.5", listener.port)
        assert (await asyncio.wait_for(late[0].read(), 5)).startswith(b"HTTP/1.1 503")
        assert listener.counters["connections_per_source"] == 1
        assert listener.counters["connections_total"] == 1
        assert listener.counters["idle_evicted"] == 1
        newcomer[1].close()
        for _, w in held:
            w.close()


async def test_connection_without_a_complete_request_head_is_closed() -> None:
    sink = Sink(settings=ListenerSettings(header_timeout_s=0.3))
    async with serving(sink) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"POST /push/cam HTTP/1.1\r\nHost: x\r\n")  # ...and the rest never comes
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert listener.counters["header_timeout"] == 1 and listener.open_connections == 0
        writer.close()


async def test_body_timeout_answers_408() -> None:
    sink = Sink(settings=ListenerSettings(body_timeout_s=0.3))
    async with serving(sink) as listener:
        answer = await raw_exchange(
            listener.port, b"POST /push/cam HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", b"x" * 10, timeout=10
        )
        assert answer.startswith(b"HTTP/1.1 408") and b'"error": "timeout"' in answer
        assert sink.refusals["timeout"] == 1 and listener.in_flight == 0


async def test_connection_cap_stays_below_the_descriptor_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    settings = ListenerSettings(max_connections=10**7, reserve_fds=100)
    async with serving(Sink(settings=settings)) as listener:
        assert listener.max_connections <= soft - 100
        assert listener.max_connections < 10**7
