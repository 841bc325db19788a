"""`python -m simulators.plate_reader`: the simulated garage, standalone."""

import asyncio
import logging

from simulators.plate_reader import parse_args, serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
asyncio.run(serve(parse_args()))
