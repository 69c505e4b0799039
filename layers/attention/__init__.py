"""Attention: the GQA module, the dense (uncached) reference, the paged KV write and the implementation seam.

    gqa.py       the linen module: projections, qk-norm, RoPE, cache write, attention, output projection
    dense.py     causal attention over one pass's own tokens (the uncached `forward` path)
    kv_write.py  this step's k/v into the page pools, by slot
    impls.py     the implementations behind the seam (reference, pallas)
    registry.py  names -> implementations, "auto" per backend
"""
