"""`courtyard simulate access_gate`: a simulated COGP gate, with a monitor printing its traffic.

The gate is a BLE peripheral reached through the in-memory bleak backend, so it lives in the
process that talks to it (there is no radio to share between processes; see the driver README).
Run standalone, this command attaches a bleak client as a monitor and prints every notification
it receives, decoded; the gateway itself gets simulated gates with `backend: simulated`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import sys

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.tables import load_table
from simulators.access_gate.backend import SimulatedBleakClient, spawn
from simulators.access_gate.peripheral import SimulatedGatePeripheral

FAULTS = ("garble", "duplicate", "reorder", "drop", "disconnect", "skew", "die", "forced", "tamper")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `courtyard simulate access_gate`."""
    parser.add_argument("--address", default="C0:57:0A:00:00:01", help="BLE address the gate answers at")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--doors", type=int, default=1)
    parser.add_argument("--rate", type=float, default=30.0, help="arrivals per minute")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument("--table", default="cogp", help="code table the gate numbers its events with")
    parser.add_argument("--skew", type=float, default=0.0, help="device clock offset, seconds")
    parser.add_argument(
        "--fault-every", type=float, default=0.0, help="inject a random transport fault every N s (0: never)"
    )
    parser.add_argument("--faults", default=",".join(FAULTS[:5]), help=f"faults to draw from: {','.join(FAULTS)}")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: run until ^C)")


def inject(periph: SimulatedGatePeripheral, fault: str) -> None:
    """Arm one named fault: transport (garble ... die) or device (forced door, tamper)."""
    f = periph.faults
    if fault == "garble":
        f.garble += 1
    elif fault == "duplicate":
        f.duplicate += 1
    elif fault == "reorder":
        f.reorder += 1
    elif fault == "drop":
        f.drop += 2
    elif fault == "disconnect":
        periph.disconnect_all()
    elif fault == "skew":
        periph.model.clock_skew += 600
    elif fault == "die":
        periph.die()
    elif fault == "forced":
        periph.model.force_door(1, close_after=3.0)
        periph.publish()
    elif fault == "tamper":
        periph.model.tamper_now(restore_after=5.0)
        periph.publish()
    else:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


async def serve(args: argparse.Namespace) -> None:
    """Run one gate and a monitoring central until cancelled (or `--duration` elapses)."""
    gate = await spawn(
        args.address,
        seed=args.seed,
        doors=args.doors,
        arrivals_per_min=args.rate,
        speed=args.speed,
        clock_skew_s=args.skew,
        table=args.table,
    )
    periph = gate.peripheral
    table = load_table(args.table)
    rng = random.Random(args.seed)
    faults = [f for f in args.faults.split(",") if f]
    out = sys.stdout

    def show(char: BleakGATTCharacteristic, data: bytearray) -> None:
        name = {codec.EVENT_UUID: "event", codec.HISTORY_UUID: "history", codec.STATUS_UUID: "status"}
        channel = name.get(char.uuid, char.uuid)
        try:
            if channel == "status":
                st = codec.decode_status(bytes(data))
                text = f"seq={st.last_seq} open={st.open_mask:#x} locked={st.locked_mask:#x} flags={st.flags:#x}"
            else:
                frame = codec.decode_record_frame(bytes(data))
                if isinstance(frame, codec.Record):
                    entry = table.lookup(frame.code)
                    text = (
                        f"seq={frame.seq} {table.format_code(frame.code)} "
                        f"{entry.type if entry else '?'} door={frame.door} dir={frame.direction}"
                    )
                else:
                    text = f"end first={frame.first_available} next={frame.next_seq} more={frame.more}"
        except codec.FrameError as exc:
            text = f"REJECTED {exc}"
        out.write(f"{periph.address} {channel:7} {bytes(data).hex()}  {text}\n")
        out.flush()

    async def monitor() -> None:
        while True:
            try:
                gone = asyncio.Event()
                async with BleakClient(
                    periph.address, functools.partial(_set, gone), backend=SimulatedBleakClient, timeout=5
                ) as client:
                    for uuid in (codec.EVENT_UUID, codec.STATUS_UUID):
                        await client.start_notify(uuid, show)
                    await gone.wait()
            except Exception as exc:  # the gate may be dark: keep trying like a gateway would
                out.write(f"monitor: {exc}\n")
            await asyncio.sleep(1.0)

    async def chaos() -> None:
        while args.fault_every > 0 and faults:
            await asyncio.sleep(args.fault_every)
            fault = rng.choice(faults)
            out.write(f"*** injecting {fault}\n")
            inject(periph, fault)
            if fault == "die":
                await asyncio.sleep(args.fault_every)
                periph.revive()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(monitor())
            tg.create_task(chaos())
            if args.duration > 0:
                await asyncio.sleep(args.duration)
                raise _Done
    except* _Done:
        pass
    finally:
        await gate.aclose()


def _set(event: asyncio.Event, _client: BleakClient) -> None:
    event.set()


class _Done(Exception):
    """Ends the task group when --duration elapses."""
