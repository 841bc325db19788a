"""A lean Modbus TCP link for polling: register reads (function 3 or 4), one request at a time.

A poll is one small request and one small answer per block. pymodbus spends several times
the work of the exchange itself on each one (a lock, a `wait_for`, PDU objects, log-string
formatting); at a thousand polls per second that was a quarter of the gateway's CPU. This
link builds the request with one `struct.pack`, matches the answer by transaction id and
checks it field by field. Commands still go through pymodbus, on their own link
(drivers/modbus_elevator/commands.py).

Errors map as the supervisor expects: no connection, a timeout or a lost link is
`DeviceUnavailable` (reconnect with back-off); a Modbus exception answer or a malformed
answer is `DeviceProtocolError` (a miss that keeps the link). An answer arriving after its
request timed out is recognised by its transaction id and dropped.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import cast

from gateway.errors import DeviceProtocolError, DeviceUnavailable

#: MBAP header (transaction, protocol 0, length 6, unit) and the read PDU (function, address, count).
_REQUEST = struct.Struct(">HHHBBHH")
#: Largest MBAP length a TCP ADU may declare (unit + 253-byte PDU).
_MAX_LENGTH = 254
_FUNCTIONS = {"holding": 3, "input": 4}


class ModbusReadLink(asyncio.Protocol):
    """One TCP connection to a Modbus server; `read()` sends a request and waits for its answer."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._tid = 0
        self._waiting: asyncio.Future[bytes] | None = None
        self._expect = -1  # transaction id of the request in flight

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> ModbusReadLink:
        """Connect (DeviceUnavailable when the server cannot be reached in `timeout` seconds)."""
        link = cls()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: link, host, port)
        except (OSError, TimeoutError) as exc:
            raise DeviceUnavailable(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from exc
        return link

    @property
    def connected(self) -> bool:
        """The connection is up."""
        return self._transport is not None and not self._transport.is_closing()

    async def read(self, table: str, address: int, count: int, unit: int, timeout: float) -> list[int]:
        """Read `count` registers from `address` of unit `unit` (`table`: holding or input)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise DeviceUnavailable("not connected")
        if self._waiting is not None:
            raise RuntimeError("one request at a time on a ModbusReadLink")
        fc = _FUNCTIONS[table]
        self._tid = tid = (self._tid + 1) & 0xFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting, self._expect = fut, tid
        transport.write(_REQUEST.pack(tid, 0, 6, unit, fc, address, count))
        try:
            async with asyncio.timeout(timeout):
                frame = await fut
        except TimeoutError:
            raise DeviceUnavailable(f"no answer from unit {unit} in {timeout} s") from None
        finally:
            self._waiting, self._expect = None, -1
        if frame[7] == fc | 0x80 and len(frame) >= 9:
            raise DeviceProtocolError(f"Modbus exception code {frame[8]}")
        if frame[6] != unit or frame[7] != fc or len(frame) != 9 + 2 * count or frame[8] != 2 * count:
            raise DeviceProtocolError(f"malformed answer to a read of {count} registers at {address}")
        return list(struct.unpack_from(f">{count}H", frame, 9))

    def close(self) -> None:
        """Close the connection; a request in flight fails with DeviceUnavailable."""
        if self._transport is not None:
            self._transport.close()
        self._fail(DeviceUnavailable("link closed"))

    # asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:  # one small request at a time: never wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 7:
            length = int.from_bytes(buf[4:6], "big")
            if buf[2:4] != b"\0\0" or not 2 <= length <= _MAX_LENGTH:  # not Modbus TCP: stop listening
                self._fail(DeviceUnavailable("the server does not speak Modbus TCP"))
                buf.clear()
                if self._transport is not None:
                    self._transport.close()
                return
            end = 6 + length
            if len(buf) < end:
                return
            frame = bytes(buf[:end])
            del buf[:end]
            waiting = self._waiting
            if waiting is not None and not waiting.done() and int.from_bytes(frame[0:2], "big") == self._expect:
                waiting.set_result(frame)
            # else: the answer to a request that timed out; dropped

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(DeviceUnavailable(f"link lost: {exc}" if exc else "link closed by the device"))

    def _fail(self, exc: Exception) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(exc)
