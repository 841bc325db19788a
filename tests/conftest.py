"""Session fixtures: real mosquitto, InfluxDB 1.x and VictoriaMetrics, started once per run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import InfluxV1, Mosquitto, Victoria


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    server = Mosquitto()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_broker() -> Iterator[Mosquitto]:
    """A broker of the test's own, which it may stop and restart (persistence keeps sessions)."""
    server = Mosquitto(persistence=True)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def influx_v1() -> Iterator[InfluxV1]:
    server = InfluxV1()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def victoria() -> Iterator[Victoria]:
    server = Victoria()
    server.start()
    yield server
    server.close()
