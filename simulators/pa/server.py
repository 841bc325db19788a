"""The simulated PA system as a real OPC UA server (asyncua), with transport fault injection.

The address space is built from a node map: `node` points keep their NodeId, `path` points
create the BrowseName chain; values are encoded with the map (enumerations, scaling, types).
Methods live on the map's root object (StartEmergencyBroadcast, StopEmergencyBroadcast,
SetVolume) and fault injection on `<root>/Simulation`, so any OPC UA client can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.binary_server_asyncio import OPCUAProtocol
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from drivers.opcua_pa.codec import encode
from drivers.opcua_pa.driver import resolve_nodeid
from drivers.opcua_pa.nodemap import NodeMap, load_map
from simulators.pa.model import PaModel

log = logging.getLogger(__name__)

_GROUP_FOLDER = {
    "zone": "Zones", "amp": "Amplifiers", "line": "Lines", "power": "Power", "emergency": "Emergency",
}
_VARIANT: dict[str, ua.VariantType] = {
    "Boolean": ua.VariantType.Boolean, "Int16": ua.VariantType.Int16, "UInt16": ua.VariantType.UInt16,
    "Int32": ua.VariantType.Int32, "UInt32": ua.VariantType.UInt32, "Float": ua.VariantType.Float,
    "Double": ua.VariantType.Double, "String": ua.VariantType.String,
}
_INIT_LOCK = asyncio.Lock()


def default_shelf() -> Path:
    """Where the standard address space is cached between server starts."""
    d = Path(tempfile.gettempdir()) / "courtyard-asyncua"
    d.mkdir(parents=True, exist_ok=True)
    return d / "aspace-shelf"


# Slow responses: asyncua has no hook, so delay message processing per server instance.
_original_process = OPCUAProtocol._process_one_msg


async def _delayed_process(self: OPCUAProtocol, header: Any, buf: Any) -> bool:
    delay = getattr(self.iserver, "courtyard_delay_s", 0.0)
    if delay:
        await asyncio.sleep(delay)
    result: bool = await _original_process(self, header, buf)
    return result


OPCUAProtocol._process_one_msg = _delayed_process  # type: ignore[method-assign]


class PaSimulator:
    """A PA system on an OPC UA endpoint; restartable, with device and transport faults."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 4840, nodemap: str | NodeMap = "courtyard_sim",
                 seed: int = 1, tick_s: float = 0.5, speed: float = 1.0, paging_rate: float = 0.0,
                 shelf: Path | None = None) -> None:
        self.map = load_map(nodemap) if isinstance(nodemap, str) else nodemap
        self.model = PaModel(self.map, seed=seed, paging_rate=paging_rate)
        self.host = host
        self.port = port
        self.tick_s = tick_s
        self.speed = speed
        self.shelf = shelf or default_shelf()
        self.server: Server | None = None
        self._nodes: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}
        self._written: dict[str, Any] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.response_delay_s = 0.0

    @property
    def url(self) -> str:
        """Endpoint URL clients connect to."""
        return f"opc.tcp://{self.host}:{self.port}/courtyard/pa/"

    @property
    def running(self) -> bool:
        """True while the OPC UA endpoint accepts connections."""
        return self.server is not None

    async def __aenter__(self) -> PaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the endpoint (and the behaviour loop when `tick_s` > 0)."""
        await self._start_server()
        if self.tick_s > 0 and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        """Stop the behaviour loop and the endpoint."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self._stop_server()

    async def restart(self, down_s: float = 0.2,
                      while_down: Callable[[], Awaitable[None] | None] | None = None) -> None:
        """Stop the server (every session dies), optionally change the device, start it again."""
        await self._stop_server()
        if while_down is not None:
            result = while_down()
            if result is not None:
                await result
        await asyncio.sleep(down_s)
        await self._start_server()

    async def go_offline(self) -> None:
        """Take the endpoint down (every session dies) while the PA system keeps behaving."""
        await self._stop_server()

    async def go_online(self) -> None:
        """Bring the endpoint back after `go_offline()`; the address space shows the current state."""
        await self._start_server()

    async def _start_server(self) -> None:
        async with self._lock:
            if self.server is not None:
                return
            server = Server()
            async with _INIT_LOCK:
                first = not self.shelf.exists()
                await server.init(shelf_file=self.shelf)
                if first:
                    self.shelf.touch()  # asyncua looks for the bare path; dbm.dumb wrote .dat/.dir
            server.disable_clock()
            server.set_endpoint(self.url)
            server.set_server_name(f"Courtyard PA simulator ({self.map.vendor} {self.map.model or ''})")
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            idx = await server.register_namespace(self.map.namespace)
            self._written.clear()
            await self._build(server, idx)
            await server.start()
            server.iserver.courtyard_delay_s = self.response_delay_s  # type: ignore[attr-defined]
            self.server = server
            log.info("PA simulator (%s) on %s", self.map.vendor, self.url)

    async def _stop_server(self) -> None:
        async with self._lock:
            server, self.server = self.server, None
            if server is not None:
                await server.stop()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            self.model.tick((now - last) * self.speed)
            last = now
            try:
                await self.publish()
            except Exception:  # keep behaving even if one write fails mid-restart
                log.debug("publish failed", exc_info=True)

    # ------------------------------------------------------------------ address space

    async def _build(self, server: Server, idx: int) -> None:
        ns_array = await server.get_namespace_array()
        objects = server.nodes.objects
        folders: dict[str, Node] = {}

        async def chain(parts: list[str]) -> Node:
            parent = objects
            for i in range(len(parts)):
                key = "/".join(parts[: i + 1])
                if key not in folders:
                    folders[key] = await parent.add_object(idx, parts[i])
                parent = folders[key]
            return parent

        values = self.model.values()
        self._nodes.clear()
        for key, role, point in self.map.points():
            if point.path is not None:
                parts = [p for p in point.path.split("/") if p]
            else:
                group, _, rest = key.partition(".")
                ident, _, fld = rest.rpartition(".")
                parts = [self.map.root, _GROUP_FOLDER[group], *([ident] if ident else []), fld]
            parent = await chain(parts[:-1])
            vtype = _VARIANT[point.datatype or _default_type(role, point.enum)]
            raw = encode(self.map, role, point, values[key])
            nodeid: ua.NodeId | int = idx if point.node is None else resolve_nodeid(point.node, idx, ns_array)
            bname: ua.QualifiedName | str = parts[-1]
            if not isinstance(nodeid, int):
                bname = ua.QualifiedName(parts[-1], idx)
            var = await parent.add_variable(nodeid, bname, ua.Variant(raw, vtype))
            self._nodes[key] = (var.nodeid, vtype)
            self._written[key] = raw
        root = await chain([self.map.root])
        await self._add_methods(root, await chain([self.map.root, "Simulation"]), idx)

    async def _add_methods(self, root: Node, sim: Node, idx: int) -> None:
        s, d, b = ua.VariantType.String, ua.VariantType.Double, ua.VariantType.Boolean

        def method(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[list[ua.Variant]]]:
            async def call(_parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
                try:
                    result = await fn(*(a.Value for a in args))
                except (KeyError, ValueError) as exc:
                    raise UaStatusCodeError(StatusCodes.BadInvalidArgument) from exc  # type: ignore[no-untyped-call]
                return [ua.Variant(bool(result), b)] if result is not None else []
            return call

        async def start_eb(zones: str, message: str) -> None:
            await self.start_emergency([z for z in zones.split(",") if z.strip()], message, source="manual")

        async def set_volume(zone: str, db: float) -> bool:
            return await self.set_volume(zone, db)

        await root.add_method(idx, "StartEmergencyBroadcast", method(start_eb), [s, s], [])
        await root.add_method(idx, "StopEmergencyBroadcast", method(self.stop_emergency), [], [])
        await root.add_method(idx, "SetVolume", method(set_volume), [s, d], [b])

        async def fire(zones: str) -> None:
            await self.start_emergency([z for z in zones.split(",") if z.strip()], "fire_evacuation",
                                       source="fire_linkage")

        async def line_fault(line: str, fault: str) -> None:
            await self.set_line_fault(line, fault or None)

        async def overheat(amp: str, on: bool) -> None:
            await self.overheat(amp, on)

        async def mains(on: bool) -> None:
            await self.mains_loss(on)

        async def backup(on: bool) -> None:
            await self.backup_fault(on)

        async def delay(seconds: float) -> None:
            self.set_response_delay(seconds)

        async def drop() -> None:
            asyncio.get_running_loop().call_later(0.05, self.drop_sessions)

        async def restart(down_s: float) -> None:
            asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(self.restart(down_s)))

        await self._add_commands(root, idx)

        for name, fn, args in (
            ("FireLinkage", fire, [s]), ("SetLineFault", line_fault, [s, s]), ("Overheat", overheat, [s, b]),
            ("MainsLoss", mains, [b]), ("BackupFault", backup, [b]), ("SetResponseDelay", delay, [d]),
            ("DropSessions", drop, []), ("Restart", restart, [d]),
        ):
            await sim.add_method(idx, name, method(fn), args, [])

    async def _add_commands(self, root: Node, idx: int) -> None:
        """The map's command methods (docs/commands.md), on the map's commands object: Int32 results."""
        spec = self.map.commands
        if spec is None:
            return
        codes = {reason: code for code, reason in spec.results.items()}
        target = root
        for part in [p for p in spec.object.split("/") if p][1:]:  # the first element is the root
            target = await target.add_object(idx, part)
        s, d, i = ua.VariantType.String, ua.VariantType.Double, ua.VariantType.Int32
        signatures: dict[str, tuple[list[str], list[ua.VariantType]]] = {
            "emergency_start": (["zones", "message", "priority"], [s, s, i]),
            "emergency_stop": ([], []),
            "play": (["zones", "clip"], [s, s]),
            "set_volume": (["zone", "db"], [s, d]),
        }
        for name, method in spec.offered().items():
            names, types = signatures[name]

            async def call(_parent: ua.NodeId, *args: ua.Variant, name: str = name,
                           names: list[str] = names) -> list[ua.Variant]:
                return await self._command(name, dict(zip(names, (a.Value for a in args), strict=False)), codes)

            await target.add_method(idx, method.method, call, types, [i])

    async def _command(self, name: str, args: dict[str, Any], codes: dict[str, int]) -> list[ua.Variant]:
        if len(args) != {"emergency_start": 3, "emergency_stop": 0, "play": 2, "set_volume": 2}[name]:
            raise UaStatusCodeError(StatusCodes.BadArgumentsMissing)  # type: ignore[no-untyped-call]
        self.model.clips = self.map.commands.clips if self.map.commands and self.map.commands.clips else \
            self.model.clips
        reason = self.model.command(name, args)
        await self.publish()  # the nodes show the change before the result goes back
        return [ua.Variant(codes.get(reason, max(codes.values()) + 1), ua.VariantType.Int32)]

    # ------------------------------------------------------------------ values

    async def publish(self) -> None:
        """Write every value that changed; emergency details before the active flag."""
        server = self.server
        if server is None:
            return
        values = self.model.values()
        order = sorted(values, key=lambda k: k == "emergency.active")
        now = datetime.now(UTC)
        for key in order:
            if key not in self._nodes:
                continue
            role, point = self.map.point_table()[key]
            value = values[key]
            raw = value if key in self.model.overrides else encode(self.map, role, point, value)
            if self._written.get(key) == raw and type(self._written.get(key)) is type(raw):
                continue
            nodeid, vtype = self._nodes[key]
            if vtype in (ua.VariantType.Double, ua.VariantType.Float) and isinstance(raw, int):
                raw = float(raw)
            variant = ua.Variant(raw, vtype)
            dv = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)  # type: ignore[arg-type]
            await server.write_attribute_value(nodeid, dv)
            self._written[key] = raw

    # ------------------------------------------------------------------ commands and faults

    async def start_emergency(self, zones: list[str], message: str, source: str = "manual") -> None:
        """Start an emergency broadcast into `zones` (all when empty)."""
        self.model.start_emergency(zones, message, source)
        await self.publish()

    async def stop_emergency(self) -> None:
        """Stop the emergency broadcast."""
        self.model.stop_emergency()
        await self.publish()

    async def set_volume(self, zone: str, db: float) -> bool:
        """Set a zone volume; False when refused (emergency)."""
        ok = self.model.set_volume(zone, db)
        await self.publish()
        return ok

    async def set_line_fault(self, line: str, fault: str | None) -> None:
        """Short / open / earth / speaker_damaged on a line; None clears."""
        self.model.set_line_fault(line, fault)
        await self.publish()

    async def overheat(self, amp: str, on: bool = True) -> None:
        """Amplifier overheat on/off (spare takes over when the map has one)."""
        self.model.overheat(amp, on)
        await self.publish()

    async def mains_loss(self, on: bool = True) -> None:
        """Mains failure; backup takes over."""
        self.model.mains_loss(on)
        self.model.resolve()
        await self.publish()

    async def backup_fault(self, on: bool = True) -> None:
        """Backup supply fault."""
        self.model.backup_fault(on)
        await self.publish()

    async def set_battery(self, pct: float) -> None:
        """Battery charge in percent."""
        self.model.set_battery(pct)
        await self.publish()

    async def write_raw(self, key: str, raw: Any) -> None:
        """Force a raw node value (garbage, out-of-range) regardless of the model; None releases."""
        if raw is None:
            self.model.overrides.pop(key, None)
            self._written.pop(key, None)
        else:
            self.model.overrides[key] = raw
        await self.publish()

    def drop_sessions(self) -> None:
        """Close every client connection from the server side (session drop)."""
        if self.server is not None:
            for transport in list(self.server.iserver.asyncio_transports):
                transport.close()

    def set_response_delay(self, seconds: float) -> None:
        """Delay every request by `seconds` (slow device / congested link)."""
        self.response_delay_s = max(0.0, float(seconds))
        if self.server is not None:
            self.server.iserver.courtyard_delay_s = self.response_delay_s  # type: ignore[attr-defined]


def _default_type(role: str, enum: str | None) -> str:
    if enum is not None:
        return "Int32"
    return {"number": "Double", "bool": "Boolean"}.get(role, "String")
