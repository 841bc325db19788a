"""`python -m simulators.camera`: the camera simulator without the gateway CLI."""

import asyncio
import logging

from simulators.camera import parse_args, serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
asyncio.run(serve(parse_args()))
