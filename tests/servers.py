"""Real servers for tests: mosquitto, InfluxDB 1.x and VictoriaMetrics on free loopback ports.

Each is started as a child process with its own config and data directory and stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from simulators.net import free_port

__all__ = ["InfluxV1", "Mosquitto", "NatsCluster", "NatsNode", "Victoria", "free_port", "wait_port"]


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def _binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"{name} is not installed; run `make test` (it installs it)")


class Server:
    """A child-process server with a fixed port; stop()/start() keep the port."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"courtyard-{self.name}-"))
        self.port = free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with (self.dir / "server.log").open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Mosquitto(Server):
    name = "mosquitto"

    def __init__(self, *, persistence: bool = False, tls: dict[str, Path] | None = None) -> None:
        super().__init__()
        self.persistence = persistence
        self.tls = tls  # {"ca", "cert", "key"}: adds a TLS listener on `tls_port`
        self.tls_port = free_port() if tls else 0

    def command(self) -> list[str]:
        conf = self.dir / "mosquitto.conf"
        persist = f"persistence true\npersistence_location {self.dir}/\n" if self.persistence else "persistence false\n"
        # As root, mosquitto would drop to user `mosquitto`, who cannot read the test's files.
        user = "user root\n" if os.geteuid() == 0 else ""
        text = (f"{user}per_listener_settings false\nallow_anonymous true\n{persist}"
                "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
                f"listener {self.port} 127.0.0.1\n")
        if self.tls:
            text += (f"listener {self.tls_port} 127.0.0.1\ncafile {self.tls['ca']}\n"
                     f"certfile {self.tls['cert']}\nkeyfile {self.tls['key']}\n")
        conf.write_text(text)
        return [_binary("mosquitto"), "-c", str(conf)]


class InfluxV1(Server):
    name = "influxd"
    database = "courtyard"

    def __init__(self) -> None:
        super().__init__()
        self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        conf = self.dir / "influxdb.conf"
        d = self.dir
        conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
        )
        return [_binary("influxd"), "-config", str(conf)]

    def start(self) -> None:
        super().start()
        self.query_sync(f"CREATE DATABASE {self.database}")

    def query_sync(self, q: str, epoch: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; return rows as dicts (all series concatenated).

        `epoch="ns"` returns times as integer nanoseconds instead of RFC 3339 text."""
        params = {"q": q, "db": self.database} | ({"epoch": epoch} if epoch else {})
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as resp:
            doc = json.load(resp)
        rows: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise RuntimeError(result["error"])
            for series in result.get("series", []):
                tags = series.get("tags", {})
                for values in series["values"]:
                    rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows

    async def query(self, q: str, epoch: str | None = None) -> list[dict[str, Any]]:
        import asyncio

        return await asyncio.to_thread(self.query_sync, q, epoch)


class Victoria(Server):
    name = "victoria-metrics"

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            _binary("victoria-metrics"), f"-storageDataPath={self.dir}/data",
            f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y", "-memory.allowedBytes=256MB",
            "-search.latencyOffset=0s", "-loggerLevel=ERROR",
        ]

    def export_sync(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of every series matching `match` (JSON lines of /api/v1/export)."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=10) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]

    async def export(self, match: str) -> list[dict[str, Any]]:
        import asyncio

        return await asyncio.to_thread(self.export_sync, match)


# --- NATS Server with MQTT on JetStream (scale-out tests) ---------------------------------------


class NatsNode(Server):
    """One nats-server of a cluster: client, cluster-route and MQTT ports on loopback, JetStream on disk."""

    name = "nats"

    def __init__(self, server_name: str, cluster_dir: Path) -> None:
        super().__init__()
        self.server_name = server_name
        self.route_port = free_port()
        self.mqtt_port = free_port()
        self.store = cluster_dir / server_name
        self.routes: list[int] = []

    def command(self) -> list[str]:
        conf = self.dir / "nats.conf"
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
        conf.write_text(
            f"server_name: {self.server_name}\nlisten: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f"cluster {{ name: courtyard, listen: 127.0.0.1:{self.route_port}, routes: [{routes}] }}\n"
            # R3: losing one node keeps a quorum for the MQTT sessions, retained messages and QoS 1 streams.
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3 }}\n"
        )
        return [_binary("nats-server"), "-c", str(conf)]

    def start(self) -> None:
        with (self.dir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.mqtt_port, 30)


class NatsCluster:
    """Three nats-server nodes routed to each other, MQTT enabled on each (JetStream clustered, R3)."""

    def __init__(self, size: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="courtyard-nats-cluster-"))
        self.nodes = [NatsNode(f"n{i + 1}", self.dir) for i in range(size)]
        for node in self.nodes:
            node.routes = [n.route_port for n in self.nodes if n is not node]

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            self.wait_mqtt(node, timeout)

    @staticmethod
    def wait_mqtt(node: NatsNode, timeout: float = 60.0) -> None:
        """Until an MQTT client can connect and subscribe at QoS 1 (needs the JetStream meta leader)."""
        import paho.mqtt.client as paho

        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            probe = f"probe-{node.server_name}-{time.time_ns()}"
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=probe)
            try:
                client.connect("127.0.0.1", node.mqtt_port, keepalive=10)
                client.loop_start()
                info = client.subscribe("courtyard-probe/#", qos=1)
                time.sleep(0.3)
                if client.is_connected() and info[0] == 0:
                    return
                last = f"connected={client.is_connected()}"
            except OSError as exc:
                last = exc
            finally:
                client.loop_stop()
                with contextlib.suppress(Exception):
                    client.disconnect()
            time.sleep(0.5)
        raise TimeoutError(f"MQTT on {node.server_name} not ready after {timeout}s: {last}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.dir, ignore_errors=True)
