"""A TCP relay whose link can be cut and restored: a network outage between two real programs.

`LinkCut(target_host, target_port)` listens on a free loopback port and relays every connection
to the target. `cut()` drops every relayed connection and refuses new ones (as a broken uplink
does); `restore()` accepts again. While cut, the port is closed: connecting is refused at once, as when
the broker's host is up and its service is down. Tests and benches put it between the gateway and its MQTT
broker, so the broker stays up for everyone else while the gateway cannot reach it.
"""

from __future__ import annotations

import asyncio
import contextlib

from simulators.net import free_port


class LinkCut:
    """A cuttable TCP relay on 127.0.0.1:`port`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.up = True
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LinkCut:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        await self._close_listener()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones."""
        self.up = False
        if self._server is not None:
            self._server.close()  # no new connections from now on
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        """Accept and relay again (on the same port)."""
        self.up = True
        task = asyncio.ensure_future(self._listen())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self) -> None:
        await self._close_listener()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(dst)
            with contextlib.suppress(Exception):
                dst.transport.abort()
