"""The KV cache as page pools: storage (pool.py) and per-step attention metadata (metadata.py).

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
import importlib

_HOMES = {  # public name -> the module that defines it
    "AttentionMetadata": "infer.kv.metadata",
    "MetadataError": "infer.kv.metadata",
    "SequenceStep": "infer.kv.metadata",
    "bucket": "infer.kv.metadata",
    "build_metadata": "infer.kv.metadata",
    "rows_metadata": "infer.kv.metadata",
    "DEFAULT_PAGE_SIZE": "infer.kv.pool",
    "init_pools": "infer.kv.pool",
    "num_pages": "infer.kv.pool",
    "page_size": "infer.kv.pool",
    "pool_logical_axes": "infer.kv.pool",
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
