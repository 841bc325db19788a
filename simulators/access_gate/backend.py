"""In-memory bleak backend: `BleakClient(addr, backend=SimulatedBleakClient)` talks to a simulated gate.

This is the radio boundary and nothing more: the driver uses the public `BleakClient` API
unchanged, and the peripheral side implements the real profile. Peripherals are found by
address (or advertised name) in a process-wide registry, which is why a simulated gate runs in
the same process as the gateway (see the driver README, "Simulator").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from drivers.ble_access_gate import codec
from simulators.access_gate.model import GateModel
from simulators.access_gate.peripheral import CHARACTERISTICS, SimulatedGatePeripheral

PERIPHERALS: dict[str, SimulatedGatePeripheral] = {}


def register(peripheral: SimulatedGatePeripheral) -> SimulatedGatePeripheral:
    """Make a peripheral reachable by its address and its advertised name."""
    PERIPHERALS[peripheral.address.upper()] = peripheral
    PERIPHERALS[peripheral.name] = peripheral
    return peripheral


def unregister(peripheral: SimulatedGatePeripheral) -> None:
    """Remove a peripheral from the registry."""
    for key in (peripheral.address.upper(), peripheral.name):
        if PERIPHERALS.get(key) is peripheral:
            del PERIPHERALS[key]


def lookup(key: str) -> SimulatedGatePeripheral | None:
    """The peripheral at an address or with an advertised name."""
    return PERIPHERALS.get(key.upper()) or PERIPHERALS.get(key)


class _RunningGate:
    """A registered, wall-clock-driven gate; `aclose()` stops and unregisters it if we started it."""

    def __init__(self, peripheral: SimulatedGatePeripheral, *, owned: bool = True) -> None:
        self.peripheral = peripheral
        self.owned = owned

    async def aclose(self) -> None:
        if self.owned:  # a gate someone else registered (a scenario) outlives this gateway
            await self.peripheral.aclose()
            unregister(self.peripheral)


async def spawn(
    address: str,
    *,
    seed: int = 1,
    doors: int = 1,
    arrivals_per_min: float = 6.0,
    speed: float = 1.0,
    clock_skew_s: float = 0.0,
    table: str = "cogp",
) -> _RunningGate:
    """Create, register and start a gate at `address` whose clock follows the wall clock."""
    existing = lookup(address)
    if existing is not None:
        return _RunningGate(existing, owned=False)
    model = GateModel(
        seed=seed, doors=doors, arrivals_per_min=arrivals_per_min, start_time=time.time(), table=table
    )
    model.clock = time.time  # behaviour may run at `speed`; the device clock keeps real time
    model.clock_skew = clock_skew_s
    name = address if ":" not in address else None
    periph = register(SimulatedGatePeripheral(_as_address(address, seed), model, name=name))
    periph.start(speed=speed)
    return _RunningGate(periph)


def _as_address(key: str, seed: int) -> str:
    if key.count(":") == 5:
        return key.upper()
    return "C0:57:0A:" + ":".join(f"{b:02X}" for b in (seed & 0xFFFFFF).to_bytes(3, "big"))


def build_services(obj: Any = None, mtu: int = 23) -> BleakGATTServiceCollection:
    """The COGP GATT table as bleak objects (handles as a typical peripheral would assign them)."""
    services = BleakGATTServiceCollection()
    service = BleakGATTService(obj, 0x0010, codec.SERVICE_UUID)
    services.add_service(service)
    handle = 0x0011
    for uuid, props in CHARACTERISTICS:
        char = BleakGATTCharacteristic(obj, handle + 1, uuid, list(props), lambda: mtu - 3, service)  # type: ignore[arg-type]
        services.add_characteristic(char)
        handle += 3 if "notify" in props else 2
    return services


class SimulatedBleakClient(BaseBleakClient):
    """A `BaseBleakClient` whose radio is a function call into a `SimulatedGatePeripheral`."""

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.pop("disconnected_callback", None),
            timeout=kwargs.pop("timeout", 10.0),
        )
        self._peripheral: SimulatedGatePeripheral | None = None
        self._connected = False
        self._subs: dict[str, NotifyCallback] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # connection

    @property
    def name(self) -> str:
        """Advertised name of the peer."""
        return self._peripheral.name if self._peripheral else self.address

    @property
    def mtu_size(self) -> int:
        """Negotiated ATT MTU (the peripheral's preference)."""
        return self._peripheral.mtu if self._peripheral else 23

    @property
    def is_connected(self) -> bool:
        """True between connect and a disconnect from either side."""
        return self._connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Find the peripheral and attach to it (no radio: one loop iteration)."""
        await asyncio.sleep(0)
        periph = lookup(self.address)
        if periph is None:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        try:
            periph.attach(self)
        except ConnectionRefusedError as exc:
            raise BleakError(str(exc)) from exc
        self._loop = asyncio.get_running_loop()
        self._peripheral = periph
        self._connected = True
        self.services = build_services(periph, periph.mtu)

    async def disconnect(self) -> None:
        """Solicited disconnect: no disconnected callback, as with real backends."""
        if self._peripheral is not None:
            self._peripheral.detach(self)
        self._connected = False
        self._subs.clear()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """The profile needs no pairing; accepted for API completeness."""

    async def unpair(self) -> None:
        """See `pair`."""

    # I/O

    def _require(self) -> SimulatedGatePeripheral:
        if not self._connected or self._peripheral is None:
            raise BleakError("Not connected")
        return self._peripheral

    async def _transaction(self) -> SimulatedGatePeripheral:
        """Start an ATT request; a silent (hung) peripheral never answers, as on a real link."""
        periph = self._require()
        await asyncio.sleep(0)
        await periph.answering.wait()
        return self._require()

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """ATT read."""
        periph = await self._transaction()
        try:
            return bytearray(periph.read(characteristic.uuid))
        except PermissionError as exc:
            raise BleakError(str(exc)) from exc

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """ATT write (request or command); profile errors surface as BleakError."""
        periph = await self._transaction()
        try:
            periph.write(self, characteristic.uuid, bytes(data))
        except (PermissionError, codec.FrameError) as exc:
            raise BleakError(str(exc)) from exc

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """The profile defines no readable descriptors."""
        raise BleakError("no descriptors in the simulated profile")

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        """See `read_gatt_descriptor`."""
        raise BleakError("no descriptors in the simulated profile")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Subscribe (the CCCD write of a real stack)."""
        self._require()
        self._subs[characteristic.uuid] = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Unsubscribe."""
        self._subs.pop(characteristic.uuid, None)

    # Central protocol (peripheral -> client)

    def deliver(self, uuid: str, data: bytes) -> None:
        """A notification arrives; delivered on the next loop iteration, in order."""
        cb = self._subs.get(uuid)
        if cb is not None and self._connected and self._loop is not None:
            self._loop.call_soon(self._dispatch, uuid, cb, bytearray(data))

    def _dispatch(self, uuid: str, cb: NotifyCallback, data: bytearray) -> None:
        if self._connected and self._subs.get(uuid) is cb:
            cb(data)

    def link_lost(self) -> None:
        """Unsolicited disconnect, after notifications already on the air (bleak then calls back)."""
        if self._connected and self._loop is not None:
            self._loop.call_soon(self._lost)

    def _lost(self) -> None:
        if not self._connected:
            return
        self._connected = False
        self._subs.clear()
        if self._disconnected_callback is not None:
            self._disconnected_callback()


class SimulatedBleakScanner(BaseBleakScanner):
    """Advertises every registered peripheral, repeatedly, after `start()` (as a radio would)."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None = None,
        service_uuids: list[str] | None = None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin advertising reports."""
        self.seen_devices = {}
        self._task = asyncio.get_running_loop().create_task(self._advertise())

    async def stop(self) -> None:
        """Stop advertising reports."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _advertise(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            for periph in {id(p): p for p in PERIPHERALS.values()}.values():
                if periph.faults.refuse_connections:
                    continue
                adv = AdvertisementData(
                    local_name=periph.name,
                    manufacturer_data={},
                    service_data={},
                    service_uuids=[codec.SERVICE_UUID],
                    tx_power=None,
                    rssi=-60,
                    platform_data=(),
                )
                if not self.is_allowed_uuid(adv.service_uuids):
                    continue
                device = self.create_or_update_device(periph.address, periph.address, periph.name, None, adv)
                self.call_detection_callbacks(device, adv)

