"""Barrier control over ISAPI, for cameras that take no decision from the push reply (Hikvision).

`PUT <url>/ISAPI/Parking/channels/<n>/barrierGate` with `<BarrierGate><ctrlMode>open</ctrlMode>`;
the camera answers an ISAPI `ResponseStatus`. Digest auth is what the cameras ship with.
"""

from __future__ import annotations

from typing import Literal
from xml.etree import ElementTree

import aiohttp
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

from drivers.http_plate_reader.config import LprBarrierConfig

BarrierMode = Literal["open", "close"]


def barrier_path(channel: int) -> str:
    """The ISAPI resource of a camera's barrier."""
    return f"/ISAPI/Parking/channels/{channel}/barrierGate"


def barrier_body(mode: BarrierMode) -> bytes:
    """The ISAPI request body commanding the barrier."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<BarrierGate version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
        f"<ctrlMode>{mode}</ctrlMode></BarrierGate>"
    ).encode()


def response_status(data: bytes) -> tuple[bool, str]:
    """(ok, text) from an ISAPI ResponseStatus body; unparseable bodies are failures."""
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException):
        return False, "camera answered with something that is not ISAPI XML"
    fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in root}
    ok = fields.get("statusCode") == "1"
    return ok, fields.get("subStatusCode") or fields.get("statusString") or "?"


class IsapiBarrier:
    """One camera's barrier; the HTTP session is opened on first use and closed with the driver."""

    def __init__(self, config: LprBarrierConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        cfg = self.config
        password = cfg.password.get_secret_value()
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        if cfg.auth == "digest":
            middleware = aiohttp.DigestAuthMiddleware(cfg.username, password)
            return aiohttp.ClientSession(timeout=timeout, middlewares=(middleware,))
        headers = {"Authorization": aiohttp.encode_basic_auth(cfg.username, password)}
        return aiohttp.ClientSession(timeout=timeout, headers=headers)

    async def command(self, mode: BarrierMode) -> str | None:
        """Send one command; None when the camera confirmed it, else why it failed."""
        if self._session is None:
            self._session = self._open_session()
        url = self.config.url.rstrip("/") + barrier_path(self.config.channel)
        try:
            async with self._session.put(
                url, data=barrier_body(mode), headers={"Content-Type": "application/xml"}
            ) as resp:
                data = await resp.content.read(65536)
                if resp.status != 200:
                    return f"HTTP {resp.status} from camera"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
        ok, text = response_status(data)
        return None if ok else f"camera refused: {text}"[:200]

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
