"""Real ATT/GATT between bleak and the simulated gate, over bumble's in-process virtual radio.

`BumbleRadio` hosts simulated peripherals as bumble `Device`s with a GATT server on a shared
`LocalLink`; `BumbleBleakClient` is a bleak backend whose every call is a real ATT exchange from
a bumble central on the same link (MTU exchange, discovery, CCCD writes, notifications, reads,
write requests). Nothing here touches BlueZ, D-Bus or the kernel, so it runs in any CI container.
Test-only: bumble is in the `test` extra, not a runtime dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bumble import gatt
from bumble.controller import Controller
from bumble.core import UUID
from bumble.device import Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from drivers.ble_access_gate import codec
from simulators.access_gate.peripheral import CHARACTERISTICS, SimulatedGatePeripheral

PREFERRED_MTU = 185
_PROPS = {
    "read": gatt.Characteristic.Properties.READ,
    "write": gatt.Characteristic.Properties.WRITE,
    "notify": gatt.Characteristic.Properties.NOTIFY,
}
_central_ids = itertools.count(1)


class _BumbleCentral:
    """The peripheral's view of one bumble connection; notifications keep their order."""

    def __init__(self, device: Device, connection: Connection, chars: dict[str, gatt.Characteristic[Any]]) -> None:
        self.device = device
        self.connection = connection
        self.chars = chars
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._send())

    def deliver(self, uuid: str, data: bytes) -> None:
        self._queue.put_nowait((uuid, data))

    def link_lost(self) -> None:
        self._queue.put_nowait(None)

    async def _send(self) -> None:
        while (item := await self._queue.get()) is not None:
            uuid, data = item
            with contextlib.suppress(Exception):  # unsubscribed or link already gone
                await self.device.notify_subscriber(self.connection, self.chars[uuid], data)
        with contextlib.suppress(Exception):
            await self.connection.disconnect()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class BumbleRadio:
    """One virtual radio: peripherals advertise on it, `BumbleBleakClient`s connect through it."""

    current: BumbleRadio | None = None  # where BumbleBleakClient looks peripherals up

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self.peripherals: dict[str, SimulatedGatePeripheral] = {}
        self._devices: list[Device] = []
        self._centrals: set[_BumbleCentral] = set()
        BumbleRadio.current = self

    def _device(self, name: str, address: str) -> Device:
        controller = Controller(name, link=self.link, public_address=address)
        device = Device(name=name, address=Address(address), host=Host(controller, AsyncPipeSink(controller)))
        self._devices.append(device)
        return device

    async def add_peripheral(self, periph: SimulatedGatePeripheral) -> Device:
        """Serve `periph`'s GATT table on the radio and start advertising."""
        device = self._device(periph.name, periph.address)
        centrals: dict[Connection, _BumbleCentral] = {}
        chars: dict[str, gatt.Characteristic[Any]] = {}

        def reader(uuid: str) -> Any:
            return lambda conn: periph.read(uuid)

        def writer(uuid: str) -> Any:
            def write(conn: Connection, value: bytes) -> None:
                central = centrals.get(conn)
                if central is not None:
                    periph.write(central, uuid, bytes(value))

            return write

        for uuid, props in CHARACTERISTICS:
            flags = gatt.Characteristic.Properties(0)
            for p in props:
                flags |= _PROPS[p]
            value = gatt.CharacteristicValue(
                read=reader(uuid) if "read" in props else None, write=writer(uuid) if "write" in props else None
            )
            perms = gatt.Characteristic.READABLE | gatt.Characteristic.WRITEABLE
            chars[uuid] = gatt.Characteristic(uuid, flags, perms, value)
        device.add_service(gatt.Service(codec.SERVICE_UUID, list(chars.values())))

        def on_connection(connection: Connection) -> None:
            central = _BumbleCentral(device, connection, chars)
            self._centrals.add(central)
            try:
                periph.attach(central)
            except ConnectionRefusedError:
                central.link_lost()
                return
            centrals[connection] = central

            def on_disconnection(*_: Any) -> None:
                periph.detach(central)
                centrals.pop(connection, None)
                central.link_lost()

            connection.on(connection.EVENT_DISCONNECTION, on_disconnection)

        device.on(device.EVENT_CONNECTION, on_connection)
        await device.power_on()
        await device.start_advertising(auto_restart=True, advertising_interval_min=20.0)
        self.peripherals[periph.address.upper()] = periph
        return device

    def new_central(self) -> Device:
        """A fresh central (its own controller) for one client connection."""
        n = next(_central_ids)
        return self._device(f"central-{n}", f"F0:00:00:{n >> 16 & 0xFF:02X}:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}")

    async def aclose(self) -> None:
        """Stop senders and power everything off."""
        for central in list(self._centrals):
            await central.close()
        for device in self._devices:
            with contextlib.suppress(Exception):
                await device.power_off()
        if BumbleRadio.current is self:
            BumbleRadio.current = None


def _bleak_props(proxy: CharacteristicProxy[Any]) -> list[str]:
    out = []
    for name, flag in _PROPS.items():
        if proxy.properties & flag:
            out.append(name)
    return out


class BumbleBleakClient(BaseBleakClient):
    """A bleak backend driving a bumble central on `BumbleRadio.current`."""

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.pop("disconnected_callback", None),
            timeout=kwargs.pop("timeout", 10.0),
        )
        self._radio: BumbleRadio | None = kwargs.pop("radio", None) or BumbleRadio.current
        self._device: Device | None = None
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._proxies: dict[int, CharacteristicProxy[Any]] = {}
        self._mtu = 23

    @property
    def mtu_size(self) -> int:
        """ATT MTU negotiated at connect."""
        return self._mtu

    @property
    def is_connected(self) -> bool:
        """True while the bumble connection is up."""
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """LE connect, MTU exchange and primary service + characteristic discovery."""
        radio = self._radio
        if radio is None or self.address.upper() not in radio.peripherals:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        device = radio.new_central()
        self._device = device
        await device.power_on()
        try:
            connection = await device.connect(Address(self.address.upper()), timeout=self._timeout)
        except Exception as exc:
            raise BleakError(f"connect failed: {exc}") from exc
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        peer = Peer(connection)
        self._peer = peer
        self._mtu = await peer.request_mtu(PREFERRED_MTU)
        await peer.discover_services([UUID(codec.SERVICE_UUID)])
        services = BleakGATTServiceCollection()
        for svc in peer.services:
            if str(svc.uuid).lower() != codec.SERVICE_UUID:
                continue
            bsvc = BleakGATTService(svc, svc.handle, str(svc.uuid).lower())
            services.add_service(bsvc)
            for ch in await peer.discover_characteristics(service=svc):
                self._proxies[ch.handle] = ch
                services.add_characteristic(
                    BleakGATTCharacteristic(
                        ch, ch.handle, str(ch.uuid).lower(), _bleak_props(ch), lambda: self._mtu - 3, bsvc  # type: ignore[arg-type]
                    )
                )
        self.services = services

    def _on_disconnection(self, *_: Any) -> None:
        was = self._connection is not None
        self._connection = None
        if was and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        """Terminate the link (solicited: no disconnected callback) and retire the central."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()
        if self._device is not None:
            with contextlib.suppress(Exception):
                await self._device.power_off()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """The profile needs no pairing."""

    async def unpair(self) -> None:
        """See `pair`."""

    def _proxy(self, characteristic: BleakGATTCharacteristic) -> tuple[Peer, CharacteristicProxy[Any]]:
        if self._peer is None or self._connection is None:
            raise BleakError("Not connected")
        return self._peer, self._proxies[characteristic.handle]

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """ATT Read Request."""
        peer, proxy = self._proxy(characteristic)
        return bytearray(await peer.read_value(proxy))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """ATT Write Request (response=True) or Write Command."""
        peer, proxy = self._proxy(characteristic)
        await peer.write_value(proxy, bytes(data), with_response=response)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Not needed by the profile."""
        raise BleakError("descriptor access is not implemented by this backend")

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        """Not needed by the profile."""
        raise BleakError("descriptor access is not implemented by this backend")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """CCCD write enabling notifications; values reach `callback` as bytearrays."""
        peer, proxy = self._proxy(characteristic)
        await peer.subscribe(proxy, lambda value: callback(bytearray(value)))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """CCCD write disabling notifications."""
        peer, proxy = self._proxy(characteristic)
        await peer.unsubscribe(proxy)
