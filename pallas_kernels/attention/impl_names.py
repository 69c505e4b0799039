"""The names ModelConfig.attention_impl accepts: "auto", the built-in "pallas" and "reference", and any
name added through layers/attention/registry.py's `register`.

A plain table (it imports nothing) below the model, so that validating a config (infer/config) reads it
without importing the model's layers or loading a kernel; the functions behind the names stay in
layers/attention/registry.py.
"""
from typing import Tuple

AUTO = "auto"                        # picks an implementation per backend when the step is traced
BUILTIN = ("pallas", "reference")    # the Pallas kernels; the pure-JAX twins
_added = set()                       # names registered at run time


def add(name: str) -> None:
    """Accept `name` from now on (called by the registry when an implementation is registered)."""
    if name == AUTO:
        raise ValueError(f"attention_impl: {AUTO!r} is reserved (it picks an implementation per backend)")
    _added.add(name)


def names() -> Tuple[str, ...]:
    """Every name ModelConfig.attention_impl accepts."""
    return (AUTO,) + tuple(sorted(set(BUILTIN) | _added))
