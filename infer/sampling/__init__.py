"""Sampling: filters (temperature, top-k, top-p, min-p), the per-request sampling rule, and structured outputs'
token bitmasks (token_mask.py on the device, grammar.py's llguidance matchers on the host).

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {  # public name -> the module that defines it
    "filter_logits": "infer.sampling.filters",
    "probs": "infer.sampling.filters",
    "sample": "infer.sampling.sampler",
    "request_keys": "infer.sampling.sampler",
    "is_stop": "infer.sampling.sampler",
    "TOKEN": "infer.sampling.sampler",
    "DRAFT": "infer.sampling.sampler",
    "ACCEPT": "infer.sampling.sampler",
    "apply_token_bitmask": "infer.sampling.token_mask",
    "unpack_token_bitmask": "infer.sampling.token_mask",
    "TokenGrammar": "infer.sampling.grammar",
    "grammar_text": "infer.sampling.grammar",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)
