"""Commands to a PA system: OPC UA method calls described by the node map, confirmed by read-back.

The map's `commands:` section names the object holding the methods and each command's method
(`nodemap.PaCommands`). A command succeeds only when the method returns result 0 *and* the
mapped nodes read back its effect: the emergency flag and the zones' states for
`emergency_start`/`emergency_stop`, the zones playing a message for `play`, the zone's volume
for `set_volume`. Any other result is a refusal, with the map's reason for the code.

The executor keeps its own OPC UA session, apart from the driver's subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.uaerrors import BadTimeout, UaError, UaStatusCodeError

from drivers.opcua_pa.codec import decode, jsonable
from drivers.opcua_pa.config import OpcUaPaConfig
from drivers.opcua_pa.driver import browse_path, resolve_nodeid
from drivers.opcua_pa.nodemap import NodeMap, PaCommands, load_map
from gateway.commands import CommandRejected, Outcome

_LINK_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, UaError)
_CLIP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Read-backs while a method's effect is not visible yet (the server may publish after answering).
POLL_S = 0.02
VOLUME_TOLERANCE_DB = 0.5


class PaCommandExecutor:
    """The command executor of one PA system (`DriverSpec.extras["commands"]`)."""

    def __init__(self, config: OpcUaPaConfig) -> None:
        self.cfg = config
        self.map: NodeMap = load_map(config.map)
        self.spec: PaCommands | None = self.map.commands
        self._client: Client | None = None
        self._object: Node | None = None
        self._nodes: dict[str, Node] = {}
        self._ns = 0

    def names(self) -> frozenset[str]:
        """The commands the node map describes."""
        return frozenset(self.spec.offered()) if self.spec else frozenset()

    # --- arguments ---------------------------------------------------------------------------

    def check(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Normalized arguments, or `CommandRejected`."""
        if self.spec is None or name not in self.spec.offered():
            raise CommandRejected("unknown_command")
        allowed = {"emergency_start": {"zones", "message", "clip", "priority"}, "emergency_stop": set(),
                   "play": {"zones", "clip"}, "set_volume": {"zone", "db"}}[name]
        extra = sorted(set(args) - allowed)
        if extra:
            raise CommandRejected(f"unexpected_args:{','.join(extra)}")
        if name == "emergency_stop":
            return {}
        if name == "set_volume":
            zone = self._zone(args.get("zone"), "zone")
            db = args.get("db")
            if db is None:
                raise CommandRejected("missing_arg:db")
            if isinstance(db, bool) or not isinstance(db, int | float):
                raise CommandRejected("bad_arg:db")
            point = self.map.zone(zone).volume  # type: ignore[union-attr]
            low, high = point.range if point is not None and point.range else (-80.0, 0.0)
            if not low <= db <= high:
                raise CommandRejected(f"bad_arg:db:out_of_range[{low:g},{high:g}]")
            return {"zone": zone, "db": float(db)}
        zones = self._zones(args.get("zones", ""))
        if name == "play":
            return {"zones": zones, "clip": self._clip(args.get("clip"), required=True)}
        message = args.get("message", args.get("clip"))
        if "message" in args and "clip" in args:
            raise CommandRejected("bad_arg:message:give_message_or_clip")
        if message is None:
            raise CommandRejected("missing_arg:message")
        if not isinstance(message, str) or not 0 < len(message) <= 128:
            raise CommandRejected("bad_arg:message")
        if "clip" in args:
            self._clip(message, required=True)
        priority = args.get("priority", 255)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 255:
            raise CommandRejected("bad_arg:priority:out_of_range[1,255]")
        return {"zones": zones, "message": message, "priority": priority}

    def _zone(self, value: Any, arg: str) -> str:
        if value is None:
            raise CommandRejected(f"missing_arg:{arg}")
        if not isinstance(value, str) or self.map.zone(value) is None:
            raise CommandRejected(f"bad_arg:{arg}:unknown_zone")
        return value

    def _zones(self, value: Any) -> str:
        """Comma-separated zone ids; empty or `all` for every zone."""
        if not isinstance(value, str):
            raise CommandRejected("bad_arg:zones")
        ids = [z.strip() for z in value.split(",") if z.strip()]
        if ids == ["all"]:
            return ""
        for z in ids:
            self._zone(z, "zones")
        return ",".join(dict.fromkeys(ids))

    def _clip(self, value: Any, *, required: bool) -> str:
        if value is None:
            if required:
                raise CommandRejected("missing_arg:clip")
            return ""
        if not isinstance(value, str) or not _CLIP.match(value):
            raise CommandRejected("bad_arg:clip")
        assert self.spec is not None
        if self.spec.clips and value not in self.spec.clips:
            raise CommandRejected("bad_arg:clip:unknown_clip")
        return value

    # --- transport ---------------------------------------------------------------------------

    async def _link(self) -> tuple[Client, Node]:
        if self._client is not None and self._object is not None:
            return self._client, self._object
        assert self.spec is not None
        cfg = self.cfg
        client = Client(cfg.url, timeout=cfg.request_timeout_s)
        if cfg.username:
            client.set_user(cfg.username)
        if cfg.password is not None:
            client.set_password(cfg.password.get_secret_value())
        try:
            await asyncio.wait_for(client.connect(), cfg.request_timeout_s * 2)
            ns_array: list[str] = await client.get_namespace_array()
            if self.map.namespace not in ns_array:
                raise _Unavailable(f"namespace {self.map.namespace} not on server")
            self._ns = ns_array.index(self.map.namespace)
            obj: Node = await client.nodes.objects.get_child(browse_path(self.spec.object, self._ns))
            for key, _role, point in self.map.points():
                if point.node is not None:
                    self._nodes[key] = client.get_node(resolve_nodeid(point.node, self._ns, ns_array))
                elif point.path is not None:
                    self._nodes[key] = await client.nodes.objects.get_child(browse_path(point.path, self._ns))
        except _LINK_OR_TIMEOUT as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
            raise _Unavailable(f"{cfg.url}: {exc!r}"[:200]) from exc
        except _Unavailable:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
            raise
        self._client, self._object = client, obj
        return client, obj

    async def _drop(self) -> None:
        client, self._client, self._object = self._client, None, None
        self._nodes.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)

    async def _read(self, keys: list[str]) -> dict[str, Any]:
        client, _ = await self._link()
        table = self.map.point_table()
        present = [k for k in keys if k in self._nodes]
        values = await client.read_values([self._nodes[k] for k in present])
        out: dict[str, Any] = {}
        for key, raw in zip(present, values, strict=True):
            role, point = table[key]
            out[key] = decode(self.map, role, point, jsonable(raw), name=key).value
        return out

    # --- confirmation ------------------------------------------------------------------------

    def _targets(self, zones: str) -> list[str]:
        return zones.split(",") if zones else [z.id for z in self.map.zones]

    async def _shows(self, name: str, args: dict[str, Any]) -> bool:
        """The mapped nodes read back the command's effect."""
        if name in ("emergency_start", "emergency_stop"):
            targets = self._targets(args.get("zones", "")) if name == "emergency_start" else []
            keys = ["emergency.active", "emergency.zones", *(f"zone.{z}.state" for z in targets)]
            v = await self._read(keys)
            if name == "emergency_stop":
                return v.get("emergency.active") is False
            return (v.get("emergency.active") is True
                    and ("emergency.zones" not in v or set(targets) <= set(v["emergency.zones"] or ()))
                    and all(v.get(f"zone.{z}.state", "emergency") == "emergency" for z in targets))
        if name == "play":
            targets = self._targets(args["zones"])
            v = await self._read([f"zone.{z}.{f}" for z in targets for f in ("state", "source")])
            return all(v.get(f"zone.{z}.state", "paging") in ("paging", "background")
                       and v.get(f"zone.{z}.source", "message") == "message" for z in targets)
        key = f"zone.{args['zone']}.volume"
        v = await self._read([key])
        if key not in v:
            return True  # a map without the volume node: the method result is all there is
        return v[key] is not None and abs(v[key] - args["db"]) <= VOLUME_TOLERANCE_DB

    async def _confirm(self, name: str, args: dict[str, Any], deadline: float) -> Outcome:
        loop = asyncio.get_running_loop()
        while True:
            if await self._shows(name, args):
                return Outcome("succeeded", None)
            if loop.time() >= deadline:
                return Outcome("failed", "not_confirmed")
            await asyncio.sleep(POLL_S)

    # --- executor interface ----------------------------------------------------------------

    async def execute(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """Call the method; on result 0, confirm by read-back until `deadline`."""
        assert self.spec is not None
        loop = asyncio.get_running_loop()
        method = self.spec.offered()[name].method
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                _client, obj = await self._link()
        except TimeoutError:
            await self._drop()
            return Outcome("failed", "device_timeout")
        except _Unavailable as exc:
            await self._drop()
            return Outcome("failed", f"device_unavailable:{exc}")
        variants = _variants(name, args)
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                result = await obj.call_method(f"{self._ns}:{method}", *variants)
                code = result[0] if isinstance(result, list) else result
                if code != 0:
                    return Outcome("failed", f"refused:{self.spec.results.get(code, f'code_{code}')}")
                return await self._confirm(name, args, deadline)
        except (TimeoutError, BadTimeout):
            await self._drop()  # the call may have reached the server: `failed`, never re-sent
            return Outcome("failed", "device_timeout")
        except UaStatusCodeError as exc:
            return Outcome("failed", f"device_error:{type(exc).__name__}")
        except _FAILURES as exc:  # the link went while calling (timeouts are handled above)
            await self._drop()
            return Outcome("failed", f"device_unavailable:{type(exc).__name__}")

    async def resolve(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """A call a previous run made without seeing its result: the nodes decide, never a second call."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                if await self._shows(name, args):
                    return Outcome("succeeded", None)
        except _FAILURES:
            await self._drop()
        return Outcome("failed", "unconfirmed_after_restart")

    async def aclose(self) -> None:
        """Close the command session."""
        await self._drop()


def _variants(name: str, args: dict[str, Any]) -> list[ua.Variant]:
    """The method's input arguments, in the order and types the map's methods take."""
    s, d, i = ua.VariantType.String, ua.VariantType.Double, ua.VariantType.Int32
    if name == "emergency_start":
        return [ua.Variant(args["zones"], s), ua.Variant(args["message"], s), ua.Variant(args["priority"], i)]
    if name == "play":
        return [ua.Variant(args["zones"], s), ua.Variant(args["clip"], s)]
    if name == "set_volume":
        return [ua.Variant(args["zone"], s), ua.Variant(args["db"], d)]
    return []


class _Unavailable(Exception):
    """The PA system could not be reached or lacks the mapped objects."""


_LINK_OR_TIMEOUT: tuple[type[BaseException], ...] = (TimeoutError, *_LINK_ERRORS)
_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, _Unavailable, *_LINK_ERRORS)
