"""Sinks: where committed events go (MQTT, InfluxDB)."""

from __future__ import annotations

from gateway.config import GatewayConfigBase
from gateway.metrics import Counters
from gateway.sinks.base import Sink


def build_sinks(config: GatewayConfigBase, counters: Counters) -> list[Sink]:
    """The sinks a configuration asks for."""
    sinks: list[Sink] = []
    if config.mqtt.enabled:
        from gateway.sinks.mqtt import MqttSink

        sinks.append(MqttSink(
            config.mqtt, site=config.site, gateway_id=config.gateway_id, counters=counters,
            health=counters.snapshot, status_interval_s=config.status_interval_s,
            lifecycle=config.alarms.lifecycle,
        ))
    if config.influx.url:
        from gateway.sinks.influx import InfluxSink

        sinks.append(InfluxSink(config.influx, counters=counters))
    return sinks


__all__ = ["Sink", "build_sinks"]
