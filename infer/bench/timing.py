"""Timing helpers every benchmark uses: warm up, block until ready, report medians.

    from infer.bench.timing import time_fn, timed, block

    t = time_fn(lambda: step(x), warmup=2, repeats=10)    # each call blocked on its output
    t.median_s, t.min_s, t.samples

    # Per-call setup that is NOT timed (e.g. a fresh cache for a step that donates it):
    t = time_fn(lambda cache: prefill(params, cfg, tokens, lengths, cache),
                setup=lambda: (init_cache(cfg, B, S),))

    out, seconds = timed(fn, *args)                       # one blocked call

Rules: the first `warmup` calls (compilation, autotuning, allocator warm-up)
are discarded; every timed call ends with `jax.block_until_ready` on its whole
output pytree (JAX dispatch is asynchronous: without it you time the dispatch);
report the median, never the mean of a handful of samples.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional, Tuple

import jax


def block(x):
    """Wait until every array in the pytree `x` is computed; returns `x`."""
    return jax.block_until_ready(x)


def timed(fn: Callable, *args, **kwargs):
    """(output, seconds) of one call, blocked on the output."""
    t0 = time.perf_counter()
    out = block(fn(*args, **kwargs))
    return out, time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock samples in seconds (warm-up excluded)."""

    samples: Tuple[float, ...]

    def __post_init__(self):
        if not self.samples:
            raise ValueError("Timing.samples: need at least one sample")

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def min_s(self) -> float:
        return min(self.samples)

    @property
    def max_s(self) -> float:
        return max(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)

    def to_dict(self) -> dict:
        return {"median_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s, "n": self.n}


def time_fn(fn: Callable, *, warmup: int = 1, repeats: int = 5, setup: Optional[Callable[[], tuple]] = None
            ) -> Timing:
    """Call `fn(*setup())` warmup + repeats times, each blocked; time only `fn`, keep the last `repeats`."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"time_fn: need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    samples = []
    for i in range(warmup + repeats):
        args = block(setup()) if setup is not None else ()
        _, dt = timed(fn, *args)
        if i >= warmup:
            samples.append(dt)
    return Timing(tuple(samples))
