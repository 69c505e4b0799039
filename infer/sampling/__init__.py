"""Sampling: filters (temperature, top-k, top-p, min-p) and the per-request sampling rule.

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
import importlib

_HOMES = {  # public name -> the module that defines it
    "filter_logits": "infer.sampling.filters",
    "probs": "infer.sampling.filters",
    "sample": "infer.sampling.sampler",
    "request_keys": "infer.sampling.sampler",
    "is_stop": "infer.sampling.sampler",
    "TOKEN": "infer.sampling.sampler",
    "DRAFT": "infer.sampling.sampler",
    "ACCEPT": "infer.sampling.sampler",
}
__all__ = list(_HOMES)


def __getattr__(name):
    """Import a public name's module when the name is first read (PEP 562), and keep the value."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
