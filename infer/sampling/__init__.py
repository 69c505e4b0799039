"""Sampling: filters (temperature, top-k, top-p, min-p) and the per-request sampling rule."""
from infer.sampling.filters import filter_logits, probs
from infer.sampling.sampler import ACCEPT, DRAFT, TOKEN, is_stop, request_keys, sample

__all__ = ["filter_logits", "probs", "sample", "request_keys", "is_stop", "TOKEN", "DRAFT", "ACCEPT"]
