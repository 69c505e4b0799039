"""The KV cache as page pools: storage (pool.py) and per-step attention metadata (metadata.py).

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
from pallas_kernels.lazy_names import lazy_names

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
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)
