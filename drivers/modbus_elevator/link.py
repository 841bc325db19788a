"""One Modbus TCP connection shared by every elevator behind the same gateway (`link: shared`).

Serial-to-TCP gateways (RS-485 to Ethernet), which put a whole lift bank behind one address,
often accept only one to four TCP connections, and the bus behind them answers one request at
a time anyway. With `link: shared`, the elevators configured with the same host and port (and
the command executors of those elevators) use one connection. pymodbus serializes the requests
on it with its own lock, and the link is opened again by whichever elevator finds it closed.

What stays per elevator: its misses, back-off and online state. A unit id that does not answer
is a miss for that elevator. Its driver lets go of the link during its back-off, and the other
elevators keep the link and their poll rate. On a serial bus, though, each of its timeouts
holds the bus for `timeout_s`, as it would for any master. The link closes when its last user
lets go.
"""

from __future__ import annotations

import asyncio

from pymodbus.client import AsyncModbusTcpClient

from gateway.errors import DeviceUnavailable

__all__ = ["SharedLink", "acquire", "release"]


class SharedLink:
    """The connection of one (event loop, host, port), counted by its users."""

    def __init__(self, key: tuple[asyncio.AbstractEventLoop, str, int], timeout: float) -> None:
        self.key = key
        self.host, self.port = key[1], key[2]
        self.timeout = timeout
        self.users = 0
        self.client: AsyncModbusTcpClient | None = None
        self._connecting = asyncio.Lock()

    async def ensure(self) -> AsyncModbusTcpClient:
        """The connected client, connecting first when nobody has (one connect for all waiting users)."""
        client = self.client
        if client is not None and client.connected:
            return client
        async with self._connecting:
            client = self.client
            if client is not None and client.connected:
                return client
            if client is not None:
                client.close()
            # No library auto-reconnect: each elevator's supervisor owns its back-off.
            client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout, retries=0,
                                          reconnect_delay=0)
            if not await client.connect():
                client.close()
                self.client = None
                raise DeviceUnavailable(f"cannot connect to {self.host}:{self.port}")
            self.client = client
            return client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


_links: dict[tuple[asyncio.AbstractEventLoop, str, int], SharedLink] = {}


def acquire(host: str, port: int, timeout: float) -> SharedLink:
    """The link to host:port in this event loop, with one more user (the first user's timeout holds)."""
    key = (asyncio.get_running_loop(), host, port)
    link = _links.get(key)
    if link is None:
        link = _links[key] = SharedLink(key, timeout)
    link.users += 1
    return link


def release(link: SharedLink) -> None:
    """One user fewer; the last one closes the connection."""
    link.users -= 1
    if link.users <= 0:
        link.close()
        if _links.get(link.key) is link:
            del _links[link.key]
