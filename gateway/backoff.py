"""Capped exponential back-off with jitter, shared by device supervision and the sinks.

A module of its own, importing nothing from the gateway: the sinks need it, and importing it
from the supervisor made runtime -> sinks -> supervisor -> runtime a cycle.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field


class BackoffConfig(BaseModel):
    """Capped exponential back-off with jitter, used between reconnect attempts."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)
    factor: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1, description="Fraction of the delay randomized (+/-)")


def backoff_delays(cfg: BackoffConfig, rng: random.Random | None = None) -> Iterator[float]:
    """Yield reconnect delays: initial, x factor each time, capped, each jittered by +/- `jitter`."""
    rng = rng or random.Random()
    delay = cfg.initial_s
    while True:
        spread = delay * cfg.jitter
        yield max(0.0, delay + rng.uniform(-spread, spread))
        delay = min(cfg.max_s, delay * cfg.factor)
