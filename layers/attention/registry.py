"""The attention-implementation registry: names (as in ModelConfig.attention_impl) -> implementations.

Built in: "reference" (pure JAX) and "pallas" (the Pallas kernels), both in
layers/attention/impls.py and imported on first use, so validating a config
(which asks for `names()`) never loads the kernels. "auto", the default,
resolves when the step is traced: the Pallas kernels on GPU and TPU, the
reference on CPU. A new implementation is added with `register(name, fn)`;
ModelConfig accepts any registered name (the names are kept in
pallas_kernels/attention/impl_names.py, which the config reads without importing this package).
"""
import importlib
from typing import Callable, Dict

from pallas_kernels.attention import impl_names
from pallas_kernels.attention.impl_names import AUTO, names
from pallas_kernels.platform import family

_BUILTIN = {"reference": "reference", "pallas": "pallas"}  # name -> function in layers.attention.impls
_IMPLS: Dict[str, Callable] = {}


def register(name: str, fn: Callable) -> None:
    """Add an implementation with the signature documented in layers/attention/impls.py."""
    impl_names.add(name)
    _IMPLS[name] = fn


def resolve(name: str, platform: str = None) -> str:
    """The registered name that runs for `name` on `platform` (default: the target platform,
    pallas_kernels/platform.py)."""
    if name == AUTO:
        return "reference" if family(platform) == "cpu" else "pallas"
    if name not in names():
        raise ValueError(f"attention_impl: unknown implementation {name!r}; registered: {names()}")
    return name


def get(name: str) -> Callable:
    name = resolve(name)
    if name not in _IMPLS:
        _IMPLS[name] = getattr(importlib.import_module("layers.attention.impls"), _BUILTIN[name])
    return _IMPLS[name]


_MLA_BUILTIN = {"reference": "mla_reference", "pallas": "mla_pallas"}


def get_mla(name: str) -> Callable:
    """The absorbed-MLA implementation for `name` (the built-in ones; a registered GQA-only name is refused)."""
    resolved = resolve(name)
    if resolved not in _MLA_BUILTIN:
        raise ValueError(f"attention_impl: {name!r} has no MLA implementation; MLA models run "
                         f"{sorted(_MLA_BUILTIN)} or 'auto'")
    return getattr(importlib.import_module("layers.attention.impls"), _MLA_BUILTIN[resolved])
