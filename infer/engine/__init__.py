"""Serving: continuous batching over the page pools.

block_manager (pages, prefix cache, copy-on-write) -> scheduler (which tokens run each step) ->
device_step (one jitted call: copies, the ragged step, sampling) -> engine (Engine: requests in,
updates out) -> data_parallel (DataParallelEngine: replicas, least-loaded placement) -> llm (LLM:
offline batches from a model name or directory); speculation (proposers, verify runs, off-switches) with
verify_step (its device call); request (the records), metrics (percentile summaries).

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {  # public name -> the module that defines it
    "Engine": "infer.engine.engine",
    "DataParallelEngine": "infer.engine.data_parallel",
    "make_engine": "infer.engine.data_parallel",
    "RequestError": "infer.engine.engine",
    "StepError": "infer.engine.engine",
    "SpeculativeConfig": "infer.engine.speculation",
    "RequestUpdate": "infer.engine.request",
    "RequestOutput": "infer.engine.request",
    "CompletionOutput": "infer.engine.request",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)
