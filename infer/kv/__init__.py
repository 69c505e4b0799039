"""The KV cache as page pools: storage (pool.py) and per-step attention metadata (metadata.py)."""
from infer.kv.metadata import (AttentionMetadata, MetadataError, SequenceStep, bucket, build_metadata,
                               rows_metadata)
from infer.kv.pool import DEFAULT_PAGE_SIZE, init_pools, num_pages, page_size, pool_logical_axes

__all__ = ["AttentionMetadata", "MetadataError", "SequenceStep", "bucket", "build_metadata", "rows_metadata",
           "DEFAULT_PAGE_SIZE", "init_pools", "num_pages", "page_size", "pool_logical_axes"]
