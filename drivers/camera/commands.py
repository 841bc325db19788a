"""Commands to a camera: its alarm (relay) outputs, confirmed by reading the output's state back.

* ISAPI (Hikvision): `PUT /ISAPI/System/IO/outputs/<n>/trigger` with
  `<IOPortData><outputState>high|low</outputState></IOPortData>`; confirmed by
  `GET /ISAPI/System/IO/outputs/<n>/status` reading `ioState` active / inactive.
* Dahua: `GET /cgi-bin/configManager.cgi?action=setConfig&AlarmOut[<n-1>].Mode=1|2` (forced on /
  forced off); confirmed by `GET /cgi-bin/alarm.cgi?action=getOutState` (`result=<bitmask>`).

`seconds` with `on` switches the output off again after that long, from the gateway (neither
API takes a pulse length with the trigger): best effort, counted, and lost if the gateway
stops in between (docs/commands.md). ONVIF cameras take no commands here yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from xml.etree import ElementTree

import aiohttp
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

from drivers.camera.config import CameraConfig
from gateway.commands import CommandRejected, Outcome

MAX_OUTPUT = 16
MAX_SECONDS = 3600
POLL_S = 0.02
_BODY_LIMIT = 65536


class CameraCommands:
    """The command executor of one camera (`DriverSpec.extras["commands"]`)."""

    def __init__(self, config: CameraConfig) -> None:
        self.cfg = config
        self.dialect = "dahua" if config.protocol == "dahua" else "isapi" if config.protocol in (
            "isapi", "isapi_push") else None
        if config.url is None or config.password is None:
            self.dialect = None  # a push-only camera the gateway cannot reach
        self._session: aiohttp.ClientSession | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self.auto_off_failures = 0

    def names(self) -> frozenset[str]:
        """`relay`, for cameras the gateway can reach over ISAPI or Dahua CGI."""
        return frozenset({"relay"}) if self.dialect else frozenset()

    def check(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """`output` (1-based, default 1), `state` on|off, `seconds` (with on: switch off after)."""
        if name != "relay" or not self.dialect:
            raise CommandRejected("unknown_command")
        extra = sorted(set(args) - {"output", "state", "seconds"})
        if extra:
            raise CommandRejected(f"unexpected_args:{','.join(extra)}")
        output = args.get("output", 1)
        if isinstance(output, bool) or not isinstance(output, int) or not 1 <= output <= MAX_OUTPUT:
            raise CommandRejected(f"bad_arg:output:out_of_range[1,{MAX_OUTPUT}]")
        if "state" not in args:
            raise CommandRejected("missing_arg:state")
        state = args["state"]
        if state not in ("on", "off"):
            raise CommandRejected("bad_arg:state:on_or_off")
        out: dict[str, Any] = {"output": output, "state": state}
        if "seconds" in args:
            seconds = args["seconds"]
            if state != "on":
                raise CommandRejected("bad_arg:seconds:only_with_on")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_SECONDS:
                raise CommandRejected(f"bad_arg:seconds:out_of_range(0,{MAX_SECONDS}]")
            out["seconds"] = seconds
        return out

    # --- transport ---------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            cfg = self.cfg
            assert cfg.password is not None
            password = cfg.password.get_secret_value()
            if cfg.auth == "digest":
                digest = aiohttp.DigestAuthMiddleware(login=cfg.username, password=password)
                self._session = aiohttp.ClientSession(middlewares=(digest,))
            else:
                self._session = aiohttp.ClientSession(
                    headers={"Authorization": aiohttp.encode_basic_auth(cfg.username, password)})
        return self._session

    def _url(self, path: str) -> str:
        assert self.cfg.url is not None
        return self.cfg.url.rstrip("/") + path

    async def _switch(self, output: int, on: bool) -> str | None:
        """Send the trigger; None when the camera took it, else the refusal."""
        session = self._client()
        if self.dialect == "isapi":
            body = ('<?xml version="1.0" encoding="UTF-8"?><IOPortData version="2.0" '
                    'xmlns="http://www.hikvision.com/ver20/XMLSchema">'
                    f"<outputState>{'high' if on else 'low'}</outputState></IOPortData>")
            async with session.put(self._url(f"/ISAPI/System/IO/outputs/{output}/trigger"), data=body.encode(),
                                   headers={"Content-Type": "application/xml"}) as resp:
                data = await resp.content.read(_BODY_LIMIT)
                ok, text = _response_status(data)
                if resp.status == 200 and ok:
                    return None
                return text if text != "?" else f"http_{resp.status}"
        query = {"action": "setConfig", f"AlarmOut[{output - 1}].Mode": "1" if on else "2"}
        async with session.get(self._url("/cgi-bin/configManager.cgi"), params=query) as resp:
            text = (await resp.content.read(_BODY_LIMIT)).decode(errors="replace").strip()
            if resp.status == 200 and text.startswith("OK"):
                return None
            detail = re.sub(r"[^A-Za-z0-9]+", "_", text.removeprefix("Error").strip()).strip("_").lower()
            return detail[:60] or f"http_{resp.status}"

    async def _is_on(self, output: int) -> bool | None:
        """The output's state as the camera reports it (None: it does not say)."""
        session = self._client()
        if self.dialect == "isapi":
            async with session.get(self._url(f"/ISAPI/System/IO/outputs/{output}/status")) as resp:
                if resp.status != 200:
                    return None
                fields = _fields(await resp.content.read(_BODY_LIMIT))
            state = fields.get("ioState")
            return None if state not in ("active", "inactive") else state == "active"
        async with session.get(self._url("/cgi-bin/alarm.cgi"), params={"action": "getOutState"}) as resp:
            if resp.status != 200:
                return None
            text = (await resp.content.read(_BODY_LIMIT)).decode(errors="replace")
        found = re.search(r"result=(0x[0-9a-fA-F]+|\d+)", text)
        return None if found is None else bool(int(found.group(1), 0) >> (output - 1) & 1)

    # --- executor interface ----------------------------------------------------------------

    async def execute(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """Trigger the output, then read its state back until it shows the request (or `deadline`)."""
        loop = asyncio.get_running_loop()
        on = args["state"] == "on"
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                refusal = await self._switch(args["output"], on)
            if refusal is not None:
                return Outcome("failed", f"refused:{refusal}")
            outcome = await self._confirm(args["output"], on, deadline)
        except TimeoutError:
            return Outcome("failed", "device_timeout")
        except aiohttp.ClientError as exc:
            return Outcome("failed", f"device_unavailable:{type(exc).__name__}")
        if outcome.state == "succeeded" and "seconds" in args:
            timer = asyncio.ensure_future(self._off_later(args["output"], float(args["seconds"])))
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)
        return outcome

    async def _confirm(self, output: int, on: bool, deadline: float) -> Outcome:
        loop = asyncio.get_running_loop()
        state: bool | None = None
        while True:
            with contextlib.suppress(TimeoutError):  # a status read that hangs: the deadline decides
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    state = await self._is_on(output)
            if state is on:
                return Outcome("succeeded", None)
            if loop.time() >= deadline:
                return Outcome("failed", "not_confirmed" if state is not None else "no_status_read_back")
            await asyncio.sleep(POLL_S)

    async def _off_later(self, output: int, seconds: float) -> None:
        await asyncio.sleep(seconds)
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s):
                if await self._switch(output, False) is None:
                    return
        except (TimeoutError, aiohttp.ClientError):
            pass
        self.auto_off_failures += 1

    async def resolve(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """A trigger a previous run sent: the output's state now decides, never a second trigger."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                if await self._is_on(args["output"]) is (args["state"] == "on") and "seconds" not in args:
                    return Outcome("succeeded", None)
        except (TimeoutError, aiohttp.ClientError):
            pass
        return Outcome("failed", "unconfirmed_after_restart")

    async def aclose(self) -> None:
        """Cancel pending switch-offs and close the HTTP session."""
        for timer in list(self._timers):
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _fields(data: bytes) -> dict[str, str]:
    """Top-level elements of an ISAPI XML answer, namespace dropped; {} when it is not XML."""
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException):
        return {}
    return {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in root}


def _response_status(data: bytes) -> tuple[bool, str]:
    fields = _fields(data)
    return fields.get("statusCode") == "1", fields.get("subStatusCode") or fields.get("statusString") or "?"
