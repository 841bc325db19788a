"""OPC UA transport for PA systems: subscribe to the mapped nodes, reconcile after every connect.

One `run()` is one OPC UA session. It resolves the node map, reads a full snapshot (which
reconciles remembered faults against the device), then subscribes and turns data changes
into inputs for `ctx.ingest`. Any sign of link loss (failed keep-alive probe, subscription status change,
transport error) raises `DeviceUnavailable`; the supervisor reconnects with back-off and the
next `run()` reconciles again. The decoder (decoder.py) lives on the driver, so it survives reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.opcua_pa.codec import jsonable
from drivers.opcua_pa.config import OpcUaPaConfig
from drivers.opcua_pa.decoder import PaDecoder
from drivers.opcua_pa.nodemap import NodeMap, Point, load_map
from gateway.driver import DeviceContext, PushDriver
from gateway.errors import DeviceUnavailable

_LINK_ERRORS = (OSError, TimeoutError, ConnectionError, UaError)

Change = tuple[str, Any, datetime | None]


def resolve_nodeid(ref: str, ns_index: int, ns_array: Sequence[str]) -> ua.NodeId:
    """A map NodeId string: `ns=` as is, `nsu=<uri>;` via the namespace array, bare in the map namespace."""
    if ref.startswith("nsu="):
        uri, _, rest = ref[4:].partition(";")
        if uri not in ns_array:
            raise ValueError(f"namespace {uri!r} not on server")
        return ua.NodeId.from_string(f"ns={list(ns_array).index(uri)};{rest}")
    if ref.startswith("ns="):
        return ua.NodeId.from_string(ref)
    return ua.NodeId.from_string(f"ns={ns_index};{ref}")


def browse_path(path: str, ns_index: int) -> list[str]:
    """`PA/Zones/Lobby` -> qualified names; elements written `3:Name` keep their index."""
    parts = [p for p in path.split("/") if p]
    return [p if p.partition(":")[0].isdigit() else f"{ns_index}:{p}" for p in parts]


_MIN = datetime.min.replace(tzinfo=UTC)


def _aware(ts: datetime | None) -> datetime:
    """OPC UA timestamps as aware UTC (asyncua may hand out naive ones); None sorts first."""
    if ts is None:
        return _MIN
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class _Handler:
    """Subscription callbacks -> one ordered queue (asyncua calls each in its own task, in order)."""

    def __init__(self, keys: dict[ua.NodeId, str], queue: asyncio.Queue[Change], lost: asyncio.Event,
                 driver: OpcUaPaDriver) -> None:
        self.keys = keys
        self.queue = queue
        self.lost = lost
        self.driver = driver

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        key = self.keys.get(node.nodeid)
        dv = data.monitored_item.Value
        if key is None or dv is None:
            return
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            self.driver.ctx.counters.inc("opcua_bad_status")
            return
        self.queue.put_nowait((key, jsonable(val), dv.SourceTimestamp))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self.driver.lost_reason = f"subscription status {status.Status}"
        self.lost.set()


class OpcUaPaDriver(PushDriver):
    """A PA system behind an OPC UA server, described by a node map."""

    config: OpcUaPaConfig

    def __init__(self, config: OpcUaPaConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.config = config
        self.map: NodeMap = load_map(config.map)
        self.decoder = PaDecoder(config, ctx, self.map)
        self.lost_reason = ""
        self.connects = 0

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        cfg = self.config
        client = Client(cfg.url, timeout=cfg.request_timeout_s, watchdog_intervall=cfg.watchdog_s)
        if cfg.username:
            client.set_user(cfg.username)
        if cfg.password is not None:
            client.set_password(cfg.password.get_secret_value())
        lost = asyncio.Event()
        self.lost_reason = ""

        async def on_lost(exc: Exception) -> None:
            self.lost_reason = f"keep-alive failed: {exc!r}"
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            try:
                await asyncio.wait_for(client.connect(), timeout=cfg.request_timeout_s * 2)
            except _LINK_ERRORS as exc:
                raise DeviceUnavailable(f"connect to {cfg.url} failed: {exc!r}") from exc
            self.connects += 1
            nodes = await self._resolve(client)
            await self._snapshot(client, nodes)
            queue: asyncio.Queue[Change] = asyncio.Queue()
            handler = _Handler({n.nodeid: k for k, n in nodes.items()}, queue, lost, self)
            sub = await client.create_subscription(cfg.publishing_interval_ms, handler)
            await sub.subscribe_data_change(list(nodes.values()), queuesize=cfg.queue_size,
                                            sampling_interval=ua.Double(0.0))
            await self.ctx.set_online(True)
            await self._pump(queue, lost)
        except DeviceUnavailable:
            raise
        except _LINK_ERRORS as exc:
            raise DeviceUnavailable(f"{cfg.url}: {exc!r}") from exc
        finally:
            client.connection_lost_callback = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(client.disconnect()), timeout=2.0)

    async def _resolve(self, client: Client) -> dict[str, Node]:
        """Map keys to server nodes; points the server lacks are skipped (and counted), not fatal."""
        ns_array: list[str] = await client.get_namespace_array()
        if self.map.namespace not in ns_array:
            raise DeviceUnavailable(f"namespace {self.map.namespace} not on server (wrong map?)")
        ns_index = ns_array.index(self.map.namespace)
        nodes: dict[str, Node] = {}
        for key, _role, point in self.map.points():
            node = await self._node(client, point, ns_index, ns_array, key)
            if node is not None:
                nodes[key] = node
        if not nodes:
            raise DeviceUnavailable("none of the mapped nodes exist on the server")
        return nodes

    async def _node(self, client: Client, point: Point, ns_index: int, ns_array: list[str],
                    key: str) -> Node | None:
        try:
            if point.node is not None:
                return client.get_node(resolve_nodeid(point.node, ns_index, ns_array))
            assert point.path is not None
            node: Node = await client.nodes.objects.get_child(browse_path(point.path, ns_index))
            return node
        except (ValueError, UaStatusCodeError) as exc:
            self.ctx.counters.inc("unmapped_nodes")
            self.ctx.log.warning("%s: %s not found on server: %s", self.config.id, key, exc)
            return None

    async def _snapshot(self, client: Client, nodes: dict[str, Node]) -> None:
        """Read every mapped node and reconcile: clears and raises for what changed while away."""
        keys = list(nodes)
        results = await client.read_attributes([nodes[k] for k in keys])
        values: dict[str, Any] = {}
        for key, dv in zip(keys, results, strict=True):
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                # Unknown now: keep whatever we remembered (never auto-clear on a bad read).
                self.ctx.counters.inc("opcua_bad_status")
                continue
            values[key] = jsonable(dv.Value.Value if dv.Value is not None else None)
        await self.ctx.ingest("snapshot", {"values": values})

    async def _pump(self, queue: asyncio.Queue[Change], lost: asyncio.Event) -> None:
        """Drain data changes in batches until the link is lost."""
        lost_wait = asyncio.ensure_future(lost.wait())
        getter: asyncio.Future[Change] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    raise DeviceUnavailable(self.lost_reason or "link lost")
                batch = [getter.result()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                # one publish carries items grouped per node: restore device order by timestamp
                batch.sort(key=lambda c: _aware(c[2]))
                # Source timestamps go along: with `device_time` they are the event time.
                await self.ctx.ingest("changes", {"changes": [[k, v, _aware(t).isoformat() if t else None]
                                                              for k, v, t in batch]})
                if lost.is_set():
                    raise DeviceUnavailable(self.lost_reason or "link lost")
        finally:
            lost_wait.cancel()
            if getter is not None:
                getter.cancel()  # cancelled mid-wait (shutdown): leave no pending queue.get()
