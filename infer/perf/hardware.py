"""Accelerator profiles: a frozen, self-validating `HardwareProfile` and its loader.

YAML files in `configs/hardware/` only name values (datasheet peaks); every
rule about what is valid lives here. The roofline model reads three numbers:

    peak_flops_bf16   dense bf16 FLOP/s (no sparsity)
    memory_bandwidth  HBM bytes/s
    memory_bytes      device memory capacity in bytes

and derives the accelerator's arithmetic intensity = peak_flops / bandwidth
(H100: 989e12 / 3.35e12 ≈ 295 FLOPs per byte). An operation whose intensity
is above it is compute-bound, below it memory-bound.

`profile_for_device_kind` maps a JAX `device.device_kind` string (e.g.
"NVIDIA H100 80GB HBM3") to a datasheet profile, so a benchmark can report
utilisation against the datasheet peak; `HardwareProfile.measured` builds a
profile from probed numbers (used on CPU, where no datasheet applies).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import yaml
from infer.config.paths import REPO_ROOT

HARDWARE_CONFIG_DIR = os.path.join(REPO_ROOT, "configs", "hardware")

# Substrings of jax `device_kind` (lower-cased) -> profile file name. Order matters: first match wins.
_DEVICE_KIND_PATTERNS = (
    ("h200", "h200"),
    ("h100", "h100"),
    ("a100", "a100"),
    ("v6 lite", "tpu-v6e"), ("v6e", "tpu-v6e"),
    ("v5 lite", "tpu-v5e"), ("v5e", "tpu-v5e"),
)


class HardwareError(ValueError):
    """A hardware profile value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    """Peak numbers of one accelerator (one chip / one GPU)."""

    name: str
    peak_flops_bf16: float  # FLOP/s, dense bf16
    memory_bandwidth: float  # bytes/s
    memory_bytes: float  # bytes of device memory
    source: str = "datasheet"  # "datasheet" or "measured"
    # Device-to-device bandwidth one device can send (bytes/s, one direction), e.g. NVLink 4 on H100: 450 GB/s;
    # None where the profile does not say (tensor-parallel predictions then refuse to guess).
    interconnect_bandwidth: Optional[float] = None
    # Fixed cost of one small all-reduce (s): an assumed 10 us, the order of NCCL's small-message latency on
    # NVLink; not measured here.
    interconnect_latency: float = 10e-6

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise HardwareError(f"name: must be a non-empty string, got {self.name!r}")
        for f in ("peak_flops_bf16", "memory_bandwidth", "memory_bytes"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise HardwareError(f"{f}: must be a finite number > 0, got {v!r}")
            object.__setattr__(self, f, float(v))
        for f, v in (("interconnect_bandwidth", self.interconnect_bandwidth),
                     ("interconnect_latency", self.interconnect_latency)):
            if v is None and f == "interconnect_bandwidth":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
                    v == 0 and f == "interconnect_bandwidth"):
                raise HardwareError(f"{f}: must be a finite number {'>' if f == 'interconnect_bandwidth' else '>='} 0, "
                                    f"got {v!r}")
            object.__setattr__(self, f, float(v))
        if self.source not in ("datasheet", "measured"):
            raise HardwareError(f"source: must be 'datasheet' or 'measured', got {self.source!r}")

    @property
    def intensity(self) -> float:
        """Accelerator arithmetic intensity: FLOPs it can do per byte it can move."""
        return self.peak_flops_bf16 / self.memory_bandwidth

    @classmethod
    def from_dict(cls, d: dict) -> "HardwareProfile":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HardwareError(f"{unknown[0]}: unknown HardwareProfile field (known: {sorted(known)})")
        missing = sorted(f for f in ("name", "peak_flops_bf16", "memory_bandwidth", "memory_bytes") if f not in d)
        if missing:
            raise HardwareError(f"{missing[0]}: required field missing")
        d = dict(d)
        for f in ("peak_flops_bf16", "memory_bandwidth", "memory_bytes", "interconnect_bandwidth",
                  "interconnect_latency"):
            if isinstance(d.get(f), str):  # YAML reads "3.35e12" without a dot as a string
                try:
                    d[f] = float(d[f])
                except ValueError:
                    raise HardwareError(f"{f}: not a number: {d[f]!r}") from None
        return cls(**d)

    @classmethod
    def measured(cls, name: str, memory_bandwidth: float, peak_flops: float, memory_bytes: float
                 ) -> "HardwareProfile":
        """A profile from probed numbers (achievable copy bandwidth, achievable matmul FLOP/s)."""
        return cls(name=name, peak_flops_bf16=peak_flops, memory_bandwidth=memory_bandwidth,
                   memory_bytes=memory_bytes, source="measured")


def available_hardware() -> list:
    return sorted(f[:-5] for f in os.listdir(HARDWARE_CONFIG_DIR) if f.endswith(".yaml"))


def load_hardware(name_or_path: str) -> HardwareProfile:
    """Load `configs/hardware/<name>.yaml` or a YAML path."""
    path = name_or_path
    if not os.path.exists(path):
        path = os.path.join(HARDWARE_CONFIG_DIR, f"{name_or_path}.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no hardware profile {name_or_path!r}: not a file and not one of "
                                f"{available_hardware()}")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise HardwareError(f"{path}: expected a mapping of field names to values")
    return HardwareProfile.from_dict(d)


def profile_for_device_kind(device_kind: str) -> Optional[HardwareProfile]:
    """The datasheet profile of a JAX device kind, or None (CPU, unknown accelerators).

    Note: "H100" matches the SXM profile (3.35 TB/s); a PCIe H100 (2.0 TB/s) would be
    reported against the SXM peak, so check the device string in the results.
    """
    kind = device_kind.lower()
    for pattern, name in _DEVICE_KIND_PATTERNS:
        if pattern in kind:
            return load_hardware(name)
    return None
