"""`courtyard simulate pa`: a PA (public address / voice alarm) amplifier system on a real OPC UA endpoint."""

from __future__ import annotations

import argparse
import asyncio

from simulators.pa.model import PaModel
from simulators.pa.server import PaSimulator

__all__ = ["PaModel", "PaSimulator", "add_arguments", "serve"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the simulator."""
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4840, help="OPC UA TCP port (default 4840)")
    parser.add_argument("--map", default="courtyard_sim",
                        help="Node map the address space follows: built-in name or YAML path")
    parser.add_argument("--seed", type=int, default=1, help="Random seed (paging, temperature noise)")
    parser.add_argument("--tick", type=float, default=0.5, help="Behaviour step in seconds (0: frozen)")
    parser.add_argument("--speed", type=float, default=1.0, help="Simulated seconds per real second")
    parser.add_argument("--paging-rate", type=float, default=0.002,
                        help="Random pages per zone per simulated second")


async def serve(args: argparse.Namespace) -> None:
    """Run until cancelled."""
    sim = PaSimulator(host=args.host, port=args.port, nodemap=args.map, seed=args.seed,
                             tick_s=args.tick, speed=args.speed, paging_rate=args.paging_rate)
    async with sim:
        print(f"PA simulator ({sim.map.vendor}) listening on {sim.url}", flush=True)
        await asyncio.Event().wait()
