"""Logical axis names for every parameter and cache array.

A later sharding layer maps these names to mesh axes with
`flax.linen.logical_to_mesh_axes` (rules such as ("kv_heads", "model"));
model code never mentions devices.
"""
VOCAB = "vocab"  # V
EMBED = "embed"  # D
MLP = "mlp"  # F
Q_HEADS = "q_heads"  # N
KV_HEADS = "kv_heads"  # K
HEAD_DIM = "head_dim"  # H
LAYERS = "layers"  # L
BATCH = "batch"  # B
CACHE_SEQ = "cache_seq"  # S

# Cache arrays are [L, B, K, S, H]: a decode kernel reads one (b, k) slab of S x H
# contiguously, with no transpose or copy of the cache.
CACHE_KV = (LAYERS, BATCH, KV_HEADS, CACHE_SEQ, HEAD_DIM)
CACHE_LENGTHS = (BATCH,)
