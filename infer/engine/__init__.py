"""Serving: continuous batching over the page pools.

block_manager (pages, prefix cache, copy-on-write) -> scheduler (which tokens run each step) ->
device_step (one jitted call: copies, the ragged step, sampling) -> engine (Engine: requests in,
updates out) -> data_parallel (DataParallelEngine: replicas, least-loaded placement) -> llm (LLM:
offline batches from a model name or directory); request (the records), metrics (percentile summaries).
"""
from infer.engine.data_parallel import DataParallelEngine, make_engine
from infer.engine.engine import Engine, RequestError
from infer.engine.request import CompletionOutput, RequestOutput, RequestUpdate

__all__ = ["Engine", "DataParallelEngine", "make_engine", "RequestError", "RequestUpdate", "RequestOutput", "CompletionOutput"]
