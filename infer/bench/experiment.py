"""Experiment files: discovery, the `cpu:` override, and parsing specs into frozen dataclasses.

An experiment is `configs/experiments/<name>.yaml`::

    kind: decode_bench          # runs infer.bench.decode_bench.run(spec, out_dir)
    description: one line for the summary
    model: llama3-8b            # ... fields of that kind's spec (real sizes, for GPU/TPU)
    cpu:                        # optional: replaces those fields when running on CPU
      model: small

YAML only names values. Each kind parses its dict with `parse_spec(SpecClass, spec)` into a
frozen dataclass that validates itself (unknown or missing fields are named).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from typing import Optional

import yaml
from infer.config.paths import REPO_ROOT

EXPERIMENTS_DIR = os.path.join(REPO_ROOT, "configs", "experiments")
RESERVED = ("kind", "name", "description", "cpu")


class SpecError(ValueError):
    """An experiment spec is invalid; the message names the experiment and the field."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    kind: str
    description: str
    path: str
    spec: dict  # fields after the cpu override, plus "name" and "kind"


def discover(directory: str = EXPERIMENTS_DIR) -> list:
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith((".yaml", ".yml")))


def load_experiment(path: str, size: str = "full") -> Experiment:
    """Read an experiment YAML; with size == "cpu" its `cpu:` block replaces the fields it names."""
    if size not in ("cpu", "full"):
        raise SpecError(f"size: must be 'cpu' or 'full', got {size!r}")
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise SpecError(f"{name}: expected a mapping at the top of {path}")
    kind = d.get("kind")
    if not isinstance(kind, str) or not kind.isidentifier():
        raise SpecError(f"{name}.kind: must name a module of infer.bench, got {kind!r}")
    cpu = d.get("cpu") or {}
    if not isinstance(cpu, dict):
        raise SpecError(f"{name}.cpu: must be a mapping of fields to replace on CPU, got {type(cpu).__name__}")
    bad = sorted(set(cpu) & set(RESERVED))
    if bad:
        raise SpecError(f"{name}.cpu.{bad[0]}: cannot be overridden")
    spec = {k: v for k, v in d.items() if k not in ("cpu", "description")}
    if size == "cpu":
        spec.update(cpu)
    spec["name"] = d.get("name", name)
    return Experiment(spec["name"], kind, str(d.get("description", "")), path, spec)


def _convert(value, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SpecError(f"{where}: expected a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def parse_spec(cls, spec: dict):
    """Build the frozen dataclass `cls` from an experiment dict, naming unknown/missing/mistyped fields.

    Sequence fields are declared `Tuple[X, ...]` and accept a list or a single value.
    """
    exp = spec.get("name", "?")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = {k: v for k, v in spec.items() if k not in ("kind",) and (k != "name" or "name" in fields)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{exp}.{unknown[0]}: unknown field for {cls.__name__} (known: {sorted(fields)})")
    kwargs = {}
    for fname, f in fields.items():
        if fname in data:
            kwargs[fname] = _convert(data[fname], hints[fname], f"{exp}.{fname}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{exp}.{fname}: required field missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(f"{exp}: {e}") from e


def require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise SpecError(f"{where}: {msg}")


def positive_ints(values, where: str) -> None:
    require(len(values) > 0, where, "must not be empty")
    for v in values:
        require(isinstance(v, int) and v > 0, where, f"must be positive ints, got {v!r}")


def default_size(backend: Optional[str] = None) -> str:
    """'cpu' on the CPU backend, 'full' on GPU/TPU."""
    if backend is None:
        import jax
        backend = jax.default_backend()
    return "cpu" if backend == "cpu" else "full"
