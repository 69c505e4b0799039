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
BATCH = "batch"  # B (also R, sequences of a step)
PAGES = "pages"  # P
PAGE_SLOTS = "page_slots"  # Z

# Page pools are [L, P, K, Z, H]: a kernel reads one (page, k) slab of Z x H
# contiguously, with no transpose or copy of the pool.
CACHE_KV = (LAYERS, PAGES, KV_HEADS, PAGE_SLOTS, HEAD_DIM)
LATENT = "latent"  # C (MLA's kv_lora_rank) and E (its RoPE key width)
# MLA latent pools are [L, P, Z, C] and [L, P, Z, E]: no head axis (every head reads the same latent).
CACHE_LATENT = (LAYERS, PAGES, PAGE_SLOTS, LATENT)
