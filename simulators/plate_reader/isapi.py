"""A Hikvision-style ISAPI barrier endpoint (digest auth) the gateway commands barriers through."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable

from aiohttp import web

# ------------------------------------------------------------------ ISAPI barrier (Hikvision-style downlink)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _digest_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {k.lower(): v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', rest)}


class IsapiBarrierServer:
    """The cameras' ISAPI barrier resource, `PUT /<camera>/ISAPI/Parking/channels/<n>/barrierGate`.

    Behind HTTP digest auth (RFC 7616, MD5, qop=auth), as the cameras ship; it answers an ISAPI
    ResponseStatus and tells the garage which camera's barrier went up.
    """

    realm = "IP Camera(SIM00001)"

    def __init__(self, username: str, password: str, on_open: Callable[[str], None]) -> None:
        self.username, self.password, self.on_open = username, password, on_open
        self.nonces: set[str] = set()
        self.commands: list[tuple[str, str]] = []
        self.barriers: dict[str, str] = {}  # camera -> open | close, as its status reads
        self.refuse: set[str] = set()  # cameras answering every command with deviceBusy
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind (port 0: any free port, read back from `self.port`)."""
        app = web.Application()
        app.router.add_put("/{camera}/ISAPI/Parking/channels/{channel}/barrierGate", self._barrier)
        app.router.add_get("/{camera}/ISAPI/Parking/channels/{channel}/barrierGate/barrierGateStatus", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        p = _digest_params(request.headers.get("Authorization", ""))
        if not p or p.get("username") != self.username or p.get("nonce") not in self.nonces:
            return False
        ha1 = _md5(f"{self.username}:{self.realm}:{self.password}")
        ha2 = _md5(f"{request.method}:{p.get('uri', '')}")
        if p.get("qop"):
            expected = _md5(f"{ha1}:{p['nonce']}:{p.get('nc', '')}:{p.get('cnonce', '')}:{p['qop']}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{p['nonce']}:{ha2}")
        return hmac.compare_digest(expected, p.get("response", ""))

    def _challenge(self) -> web.Response:
        nonce = secrets.token_hex(16)
        self.nonces.add(nonce)
        challenge = f'Digest realm="{self.realm}", qop="auth", nonce="{nonce}", algorithm=MD5'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def _barrier(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._challenge()
        body = await request.read()
        mode = "open" if b"<ctrlMode>open</ctrlMode>" in body else "close" if b"close" in body else "?"
        camera = request.match_info["camera"]
        if camera in self.refuse:
            return _status_xml(request.path, "4", "Device Busy", "deviceBusy")
        self.commands.append((camera, mode))
        if mode == "open":
            self.on_open(camera)
        if mode != "?":
            self.barriers[camera] = mode
        ok = mode != "?"
        return _status_xml(request.path, "1" if ok else "4", "OK" if ok else "Invalid Content",
                           "ok" if ok else "badXmlContent")

    async def _status(self, request: web.Request) -> web.Response:
        """`barrierGateStatus`: where the barrier is (open / close)."""
        if not self._authorized(request):
            return self._challenge()
        state = self.barriers.get(request.match_info["camera"], "close")
        xml = ('<?xml version="1.0" encoding="UTF-8"?><BarrierGateStatus version="2.0" '
               'xmlns="http://www.isapi.org/ver20/XMLSchema">'
               f"<barrierGateStatus>{state}</barrierGateStatus></BarrierGateStatus>")
        return web.Response(body=xml.encode(), content_type="application/xml")


def _status_xml(path: str, code: str, text: str, sub: str) -> web.Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><ResponseStatus version="2.0" '
        'xmlns="http://www.isapi.org/ver20/XMLSchema"><requestURL>'
        f"{path}</requestURL><statusCode>{code}</statusCode><statusString>{text}</statusString>"
        f"<subStatusCode>{sub}</subStatusCode></ResponseStatus>"
    )
    return web.Response(body=xml.encode(), content_type="application/xml")

