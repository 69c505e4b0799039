"""Flax linen building blocks of a Llama-family decoder.

Every module is a pure function of (params, inputs, cache): the KV cache is
an explicit argument and return value, never a linen collection.

File map (a token's path): decoder.py (embed -> scan over block.py -> norm ->
logits); block.py (norm.py, attention.py, mlp.py); attention.py (linear.py
projections, rope.py, cache write, attention_impl.py for the score/softmax/value
math); axes.py names every parameter and cache axis for sharding.
"""
