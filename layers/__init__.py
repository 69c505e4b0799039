"""Flax linen building blocks of a Llama-family decoder.

Every module is a pure function of (params, inputs, cache): the KV cache is
an explicit argument and return value, never a linen collection.

File map (a token's path): decoder.py (embed -> scan over block.py -> norm ->
logits); block.py (norm.py, attention/gqa.py, mlp.py); attention/gqa.py (linear.py
projections, rope.py, attention/kv_write.py into the page pools, attention/registry.py
for the score/softmax/value math, attention/dense.py without a cache); axes.py names
every parameter and page-pool axis for sharding.
"""
