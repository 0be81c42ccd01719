"""Jittered exponential backoff with a cap, and the ``reconnect`` config block that sets it.

Every adapter that reconnects (the live sources, the MQTT sink, the Triton backend) waits
with the one :class:`Backoff`; each names its delays with :class:`ReconnectConfig`, or a
subclass of it where its defaults differ (the keys users write are the same everywhere).
"""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A delay is shortened by up to this fraction at random, so clients that lost their peer
# together (cameras behind one switch, sinks of one broker) do not all retry in the same
# instant.
JITTER = 0.25


class ReconnectConfig(BaseModel):
    """Delays between connection attempts: from ``min_s``, doubling per failure, up to ``max_s``."""

    model_config = ConfigDict(extra="forbid")

    min_s: Annotated[
        float, Field(gt=0, le=3600, description="Delay before the first retry, in seconds.")
    ] = 1.0
    max_s: Annotated[
        float, Field(gt=0, le=3600, description="Longest delay between retries, in seconds.")
    ] = 60.0

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.min_s > self.max_s:
            raise ValueError("min_s must not exceed max_s")
        return self


class Backoff:
    """Jittered exponential backoff with a cap: ``min_s``, doubled per failure, up to ``max_s``.

    Each delay is shortened by a random 0-25 % (see ``JITTER``); ``reset()`` after a
    success starts again from ``min_s``.
    """

    def __init__(self, config: ReconnectConfig, rng: random.Random | None = None) -> None:
        self._min = config.min_s
        self._max = config.max_s
        self._failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count one more failure."""
        # Capping the exponent keeps 2**n finite after days of failures.
        base = min(self._max, self._min * 2 ** min(self._failures, 64))
        self._failures += 1
        return float(base * (1.0 - JITTER * self._rng.random()))

    def reset(self) -> None:
        """Start again from ``min_s`` (the peer is back)."""
        self._failures = 0
