"""Serving workloads: Poisson arrivals, mixed prompt and output lengths, an optional shared system prompt.

    spec = WorkloadSpec(num_requests=64, rate=4.0,
                        input_len=LengthDist("lognormal", min=8, max=256, mean=64, sigma=0.8),
                        output_len=LengthDist("lognormal", min=4, max=512, mean=96, sigma=1.0),
                        shared_prefix=32, shared_fraction=0.5, seed=0)
    requests = generate_workload(spec, vocab_size=4096)   # [WorkloadRequest(arrival_s, prompt_ids, max_new_tokens)]

or from an experiment YAML's mapping: `parse_workload({"num_requests": 64, "input_len": {"dist": "uniform",
"min": 8, "max": 64}, ...}, where="exp.workload")` (errors name the field).

What is drawn (all from numpy's default_rng, one independent stream per quantity, spawned from `seed`,
so the same seed gives the same requests whatever else changes):

- arrivals: a Poisson process of `rate` requests per second from t = 0: gaps are exponential with
  mean 1 / rate (drawn as standard exponentials divided by `rate`, so one seed at two rates gives
  the same requests with every arrival time scaled by the ratio of the rates); rate = inf puts every
  arrival at t = 0 (an offline batch);
- input lengths (each request's own tokens, the shared prefix not counted) and output lengths
  (`max_new_tokens`) from a LengthDist:
    uniform    integers in [min, max], each equally likely;
    lognormal  exp(N(mu, sigma^2)) with mu = ln(mean) - sigma^2 / 2 (so its mean is `mean` before
               clipping), rounded to the nearest integer and clipped to [min, max] (clipping moves
               the mean a little; the realised statistics are in `workload_stats`);
- prompt tokens: uniform ids in [0, vocab_size);
- the shared prefix: one sequence of `shared_prefix` ids, put in front of the prompts of a random
  `shared_fraction` of the requests (each request independently with that probability; 1.0 = all).

The function is pure: no clock, no global RNG, no device work.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from infer.bench.experiment import SpecError, parse_spec, require

DISTRIBUTIONS = ("uniform", "lognormal")


@dataclasses.dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts: uniform integers in [min, max], or a lognormal clipped to [min, max]."""

    dist: str = "uniform"
    min: int = 1
    max: int = 1
    mean: Optional[float] = None  # lognormal only: the mean before clipping
    sigma: Optional[float] = None  # lognormal only: the standard deviation of the log
    name: str = "length"

    def __post_init__(self):
        w = self.name
        require(self.dist in DISTRIBUTIONS, f"{w}.dist", f"must be one of {DISTRIBUTIONS}, got {self.dist!r}")
        for f in ("min", "max"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{w}.{f}",
                    f"must be an int >= 1, got {v!r}")
        require(self.min <= self.max, f"{w}.max", f"must be >= min ({self.min}), got {self.max}")
        if self.dist == "lognormal":
            require(self.mean is not None and self.mean > 0, f"{w}.mean",
                    f"lognormal needs a mean > 0, got {self.mean!r}")
            require(self.sigma is not None and self.sigma >= 0, f"{w}.sigma",
                    f"lognormal needs a sigma >= 0, got {self.sigma!r}")
        else:
            require(self.mean is None and self.sigma is None, f"{w}.mean",
                    "mean/sigma are lognormal fields; uniform draws integers in [min, max]")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n lengths as int64, all within [min, max]."""
        if self.dist == "uniform":
            return rng.integers(self.min, self.max + 1, size=n).astype(np.int64)
        mu = math.log(self.mean) - self.sigma ** 2 / 2
        x = np.rint(rng.lognormal(mu, self.sigma, size=n))
        return np.clip(x, self.min, self.max).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """N requests: Poisson arrivals at `rate` requests/s, lengths from `input_len` / `output_len`, a shared prefix."""

    num_requests: int
    input_len: LengthDist
    output_len: LengthDist
    rate: float = 1.0  # requests per second; inf: all at t = 0
    shared_prefix: int = 0  # tokens of the shared system prompt (0: none)
    shared_fraction: float = 1.0  # probability that a request starts with the shared prefix
    seed: int = 0
    name: str = "workload"

    def __post_init__(self):
        w = self.name
        for f in ("input_len", "output_len"):
            v = getattr(self, f)
            if isinstance(v, dict):
                object.__setattr__(self, f, parse_spec(LengthDist, {**v, "name": f"{w}.{f}"}))
            elif not isinstance(v, LengthDist):
                raise SpecError(f"{w}.{f}: expected a mapping like {{dist: uniform, min: 1, max: 64}}, got {v!r}")
        require(isinstance(self.num_requests, int) and self.num_requests >= 1, f"{w}.num_requests",
                f"must be an int >= 1, got {self.num_requests!r}")
        require(isinstance(self.rate, (int, float)) and self.rate > 0, f"{w}.rate",
                f"must be > 0 requests/s (inf: all at once), got {self.rate!r}")
        require(isinstance(self.shared_prefix, int) and self.shared_prefix >= 0, f"{w}.shared_prefix",
                f"must be an int >= 0, got {self.shared_prefix!r}")
        require(0.0 <= self.shared_fraction <= 1.0, f"{w}.shared_fraction",
                f"must be in [0, 1], got {self.shared_fraction!r}")
        require(isinstance(self.seed, int) and self.seed >= 0, f"{w}.seed", f"must be an int >= 0, got {self.seed!r}")

    @property
    def max_prompt_len(self) -> int:
        return self.shared_prefix + self.input_len.max

    @property
    def max_total_len(self) -> int:
        """The longest prompt + output any request of this spec can have."""
        return self.max_prompt_len + self.output_len.max


class WorkloadRequest(NamedTuple):
    arrival_s: float  # seconds after the start of the run
    prompt_ids: List[int]
    max_new_tokens: int


def parse_workload(d: dict, where: str = "workload") -> WorkloadSpec:
    """A WorkloadSpec from a YAML mapping; errors name `where`.field."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a mapping, got {d!r}")
    return parse_spec(WorkloadSpec, {**d, "name": where})


def _streams(spec: WorkloadSpec):
    """Independent generators for input lengths, output lengths, prompt tokens, gaps and prefix choice."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(5)]


def shared_prefix_ids(spec: WorkloadSpec, vocab_size: int) -> List[int]:
    """The shared prefix `generate_workload` puts in front of the chosen prompts (empty when none)."""
    return _streams(spec)[2].integers(0, vocab_size, size=spec.shared_prefix).tolist()


def generate_workload(spec: WorkloadSpec, vocab_size: int) -> List[WorkloadRequest]:
    """The spec's requests in arrival order (deterministic for the spec's seed)."""
    if not (isinstance(vocab_size, int) and vocab_size >= 1):
        raise ValueError(f"vocab_size: must be an int >= 1, got {vocab_size!r}")
    n = spec.num_requests
    r_in, r_out, r_tok, r_gap, r_share = _streams(spec)
    in_lens = spec.input_len.sample(r_in, n)
    out_lens = spec.output_len.sample(r_out, n)
    prefix = r_tok.integers(0, vocab_size, size=spec.shared_prefix).tolist()  # first: shared_prefix_ids repeats it
    bodies = [r_tok.integers(0, vocab_size, size=int(k)).tolist() for k in in_lens]
    gaps = r_gap.standard_exponential(n)
    arrivals = np.zeros(n) if math.isinf(spec.rate) else np.cumsum(gaps) / spec.rate
    shared = r_share.random(n) < spec.shared_fraction if spec.shared_prefix else np.zeros(n, bool)
    return [WorkloadRequest(float(arrivals[i]), (prefix if shared[i] else []) + bodies[i], int(out_lens[i]))
            for i in range(n)]


def workload_stats(requests: List[WorkloadRequest], shared_prefix: Sequence[int] = ()) -> dict:
    """Realised statistics: arrival span and mean gap, prompt / output length mean, std, min, max, and how
    many prompts start with `shared_prefix` (when given)."""
    arr = np.array([r.arrival_s for r in requests])
    p = np.array([len(r.prompt_ids) for r in requests])
    o = np.array([r.max_new_tokens for r in requests])
    gaps = np.diff(np.concatenate([[0.0], arr]))
    d = lambda x: {"mean": float(x.mean()), "std": float(x.std()), "min": int(x.min()), "max": int(x.max())}
    out = {"requests": len(requests), "span_s": float(arr.max()), "mean_gap_s": float(gaps.mean()),
           "prompt_len": d(p), "output_len": d(o), "output_tokens": int(o.sum())}
    if shared_prefix:
        k = len(shared_prefix)
        out["with_shared_prefix"] = int(sum(list(r.prompt_ids[:k]) == list(shared_prefix) for r in requests))
    return out
