"""Reading a broker's retained topics exactly, as a platform connecting now would see them."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aiomqtt


async def retained(host: str, port: int, topic_filter: str) -> dict[str, Any]:
    """Topic -> decoded body of every retained message under `topic_filter`.

    A fresh client subscribes, then publishes to a private marker topic: the broker delivers
    the marker after the retained messages it queued, so nothing is missed and nothing waited for.
    """
    marker = f"test-sync/{secrets.token_hex(8)}"
    got: dict[str, Any] = {}
    async with aiomqtt.Client(host, port, identifier=f"snapshot-{secrets.token_hex(4)}") as client:
        await client.subscribe([(topic_filter, 1), (marker, 1)])
        await client.publish(marker, b"x", qos=1)
        async with asyncio.timeout(10):
            async for msg in client.messages:
                if str(msg.topic) == marker:
                    break
                if msg.retain and isinstance(msg.payload, bytes) and msg.payload:
                    got[str(msg.topic)] = json.loads(msg.payload)
    return got


async def seed(host: str, port: int, topic: str, body: dict[str, Any]) -> None:
    """Leave a retained message on the broker, as an earlier run would have."""
    async with aiomqtt.Client(host, port) as client:
        await client.publish(topic, json.dumps(body), qos=1, retain=True)
