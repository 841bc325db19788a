"""The simulated ONVIF services, driven by another ONVIF client (onvif-zeep-async over zeep, with the
WSDLs it ships) and by hand-made requests: auth, clock skew, PullPoint limits, expiry, Unsubscribe."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import onvif
import pytest
import zeep.exceptions as zeep_exceptions

from drivers.camera import onvif_soap as soap
from simulators.camera.model import SimCamera, SimSite
from simulators.camera.server import CameraServer

PASSWORD = "zeep-secret-1"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimSite, CameraServer, int]]:
    site = SimSite([SimCamera("onvif-1", "onvif", channels=2, password=PASSWORD),
                    SimCamera("hik-1", "hikvision", channels=1, password=PASSWORD)], rate_per_min=0)
    server = CameraServer(site)
    port = await server.start()
    try:
        yield site, server, port
    finally:
        await server.aclose()


async def test_zeep_client_subscribes_pulls_renews_and_unsubscribes(sim: tuple[SimSite, CameraServer, int]) -> None:
    site, server, port = sim
    site.cameras["onvif-1"].faults.add("clock_skew")  # 7 h off: the client must use the camera's time
    cam = onvif.ONVIFCamera("127.0.0.1", port, "admin", PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()  # GetSystemDateAndTime (skew), GetServices at the bare /onvif/ path
        assert abs(cam.dt_diff.total_seconds() + 7 * 3600) < 60
        events = await cam.create_events_service()
        sub = await events.CreatePullPointSubscription({"InitialTerminationTime": "PT60S"})
        cam.xaddrs["http://www.onvif.org/ver10/events/wsdl/PullPointSubscription"] = (
            sub.SubscriptionReference.Address._value_1)
        pullpoint = await cam.create_pullpoint_service()
        for i in range(3):
            site.detect("onvif-1", "intrusion", state="start", channel=2, region=f"Door{i}")
        got = await pullpoint.PullMessages({"Timeout": dt.timedelta(seconds=2), "MessageLimit": 2})
        assert len(got.NotificationMessage) == 2  # the message limit holds
        first = got.NotificationMessage[0]
        assert first.Topic._value_1 == "tns1:RuleEngine/FieldDetector/ObjectsInside"
        items = {i.Name: i.Value for i in first.Message._value_1.Data.SimpleItem}
        assert items["IsInside"] == "true"
        rest = await pullpoint.PullMessages({"Timeout": dt.timedelta(seconds=2), "MessageLimit": 10})
        assert len(rest.NotificationMessage) == 1
        manager = await cam.create_subscription_service("PullPointSubscription")
        renewed = await manager.Renew("PT120S")
        assert (renewed.TerminationTime - renewed.CurrentTime).total_seconds() == pytest.approx(120, abs=2)
        await manager.Unsubscribe()
        svc = server.onvif["onvif-1"]  # type: ignore[attr-defined]
        assert svc.stats.renewals == 1 and svc.stats.unsubscribes == 1 and not svc.subscriptions
    finally:
        await cam.close()


async def test_home_assistant_style_pullpoint_manager(sim: tuple[SimSite, CameraServer, int]) -> None:
    """The library's PullPointManager, what Home Assistant's ONVIF integration runs."""
    site, server, port = sim
    lost: list[bool] = []
    cam = onvif.ONVIFCamera("127.0.0.1", port, "admin", PASSWORD, adjust_time=True, no_cache=True)
    try:
        await cam.update_xaddrs()
        manager = await cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: lost.append(True))
        await manager.set_synchronization_point()
        site.detect("onvif-1", "tamper", state="start")
        got = await manager.get_service().PullMessages({"Timeout": dt.timedelta(seconds=2), "MessageLimit": 5})
        assert got.NotificationMessage[0].Topic._value_1 == "tns1:VideoSource/GlobalSceneChange/ImagingService"
        await manager.shutdown()  # unsubscribes
        svc = server.onvif["onvif-1"]  # type: ignore[attr-defined]
        assert svc.stats.unsubscribes == 1 and not svc.subscriptions and not lost
    finally:
        await cam.close()


async def test_zeep_without_skew_correction_is_refused(sim: tuple[SimSite, CameraServer, int]) -> None:
    site, server, port = sim
    site.cameras["onvif-1"].faults.add("clock_skew")
    cam = onvif.ONVIFCamera("127.0.0.1", port, "admin", PASSWORD, adjust_time=False, no_cache=True)
    try:
        devicemgmt = await cam.create_devicemgmt_service()
        with pytest.raises(zeep_exceptions.Fault):
            await devicemgmt.GetCapabilities({"Category": "All"})
        assert server.onvif["onvif-1"].stats.auth_failures == 1  # type: ignore[attr-defined]
    finally:
        await cam.close()


# --- by hand: what a careless or hostile client sends ---------------------------------------------


async def _post(port: int, path: str, body: str, *, password: str = PASSWORD, created: dt.datetime | None = None,
                nonce: bytes | None = None, auth: bool = True) -> tuple[int, soap.Document | soap.SoapFault]:
    security = ""
    if auth:
        security = soap.security_header("admin", password, created=created or dt.datetime.now(dt.UTC),
                                        nonce=nonce or os.urandom(16))
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{port}{path}", data=soap.envelope(body, security=security)) as resp:
        data = await resp.read()
        try:
            return resp.status, soap.parse(data)
        except soap.SoapFault as fault:
            return resp.status, fault


async def _subscribe(port: int, cam: str, seconds: float = 60) -> str:
    _, doc = await _post(port, f"/{cam}/onvif/event_service", soap.create_pull_point_subscription(seconds))
    assert isinstance(doc, soap.Document)
    return soap.parse_subscription(doc).address


async def test_wrong_password_stale_created_and_replayed_nonce_are_refused(
        sim: tuple[SimSite, CameraServer, int]) -> None:
    _, server, port = sim
    path = "/onvif-1/onvif/device_service"
    status, answer = await _post(port, path, soap.GET_CAPABILITIES, password="wrong")
    assert status == 400 and isinstance(answer, soap.SoapFault) and answer.auth
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    _, answer = await _post(port, path, soap.GET_CAPABILITIES, created=stale)
    assert isinstance(answer, soap.SoapFault) and answer.auth
    nonce = b"n" * 16
    _, first = await _post(port, path, soap.GET_CAPABILITIES, nonce=nonce)
    _, again = await _post(port, path, soap.GET_CAPABILITIES, nonce=nonce)
    assert isinstance(first, soap.Document) and isinstance(again, soap.SoapFault) and again.auth
    _, unauth = await _post(port, path, soap.GET_SYSTEM_DATE_AND_TIME, auth=False)  # allowed without a token
    assert isinstance(unauth, soap.Document)
    assert server.onvif["onvif-1"].stats.auth_failures == 3  # type: ignore[attr-defined]


async def test_pull_waits_for_the_timeout_and_expired_subscription_faults(
        sim: tuple[SimSite, CameraServer, int]) -> None:
    site, server, port = sim
    address = await _subscribe(port, "hik-1", seconds=2)
    path = address.split(str(port), 1)[1]
    _, doc = await _post(port, path, soap.pull_messages(0.5, 5))  # nothing happens: empty at the timeout
    assert isinstance(doc, soap.Document) and soap.parse_pull_messages(doc)["messages"] == []
    task = asyncio.create_task(_post(port, path, soap.pull_messages(5, 5)))
    await asyncio.sleep(0.2)
    site.detect("hik-1", "fire", state="start")
    _, doc = await task  # answered as soon as the detection came, not after 5 s
    assert isinstance(doc, soap.Document)
    messages = soap.parse_pull_messages(doc)["messages"]
    assert messages[0]["topic"] == "tns1:RuleEngine/tnshik:FireDetection/FireDetection"
    await asyncio.sleep(2.1)
    _, fault = await _post(port, path, soap.pull_messages(0.1, 5))
    assert isinstance(fault, soap.SoapFault) and fault.unknown_subscription
    assert server.onvif["hik-1"].stats.expired_pulls == 1 and not server.onvif["hik-1"].subscriptions  # type: ignore[attr-defined]


async def test_pullpoint_expiry_fault_ends_subscriptions_early(sim: tuple[SimSite, CameraServer, int]) -> None:
    site, _, port = sim
    site.cameras["onvif-1"].faults.add("pullpoint_expiry")
    path = (await _subscribe(port, "onvif-1", seconds=600)).split(str(port), 1)[1]
    _, ok = await _post(port, path, soap.pull_messages(0.1, 5))
    assert isinstance(ok, soap.Document)
    await asyncio.sleep(2.1)
    _, fault = await _post(port, path, soap.renew(600))
    assert isinstance(fault, soap.SoapFault) and fault.unknown_subscription


async def test_malformed_and_dtd_requests_get_a_fault(sim: tuple[SimSite, CameraServer, int]) -> None:
    _, _, port = sim
    bodies: list[Any] = [b"<not xml", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', b"x" * 70000]
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(f"http://127.0.0.1:{port}/onvif-1/onvif/device_service", data=body) as resp:
                assert resp.status == 400
                with pytest.raises(soap.SoapFault):
                    soap.parse(await resp.read())
