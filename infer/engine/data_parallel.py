"""Data parallelism: independent engine replicas, each on its own devices with its own page pool.

    engine = DataParallelEngine(params, cfg, mesh=make_mesh(tensor_parallel_size=2, data_parallel_size=2), ...)

Row i of the mesh's "data" axis is replica i, an `Engine` tensor-parallel over that row's "model" devices
(or one device). A new request goes to the least-loaded replica (fewest unfinished requests, then most free
pages, then the lowest index), and stays there: its pages, prefix cache hits and preemptions are that
replica's. `step()` steps every replica with work and returns all their updates. The API is `Engine`'s
(add_request, step, abort, has_unfinished_requests, stream, run_to_completion, warmup, stats), so `LLM`
and the server take either.

The replicas are stepped one after another from this host thread; each step ends in its own transfer of
sampled tokens, so on real accelerators the replicas do not yet overlap (a thread per replica would).
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional

from jax.sharding import Mesh

from infer.config import ModelConfig
from infer.engine.engine import Engine, RequestUpdate
from infer.parallel.tensor_parallel import replica_meshes

DATA_AXIS = "data"


class DataParallelEngine:
    def __init__(self, params, cfg: ModelConfig, *, mesh: Mesh, **engine_options):
        self.replicas: List[Engine] = [Engine(params, cfg, mesh=sub, **engine_options)
                                       for sub in replica_meshes(mesh)]
        first = self.replicas[0]
        self.cfg, self.tokenizer = first.cfg, first.tokenizer
        self.max_model_len, self.max_num_seqs = first.max_model_len, first.max_num_seqs * len(self.replicas)
        self.num_pages = first.num_pages * len(self.replicas)
        self._owner: Dict[str, Engine] = {}
        self._ids = itertools.count()

    # ---- placement ---------------------------------------------------------------------------------------------
    def _load(self, i: int, eng: Engine):
        s = eng.stats()
        return (s["running"] + s["waiting"], s["pages_in_use"], i)

    def least_loaded(self) -> Engine:
        return min(((self._load(i, e), e) for i, e in enumerate(self.replicas)), key=lambda t: t[0])[1]

    # ---- Engine's API ------------------------------------------------------------------------------------------
    def add_request(self, prompt, sampling_params=None, request_id: Optional[str] = None, **kw) -> str:
        rid = request_id if request_id is not None else f"dp-{next(self._ids)}"
        if rid in self._owner:
            raise ValueError(f"request_id: {rid!r} is already in use")
        eng = self.least_loaded()
        rid = eng.add_request(prompt, sampling_params, request_id=rid, **kw)
        self._owner[rid] = eng
        return rid

    @property
    def requests(self) -> dict:
        out = {}
        for e in self.replicas:
            out.update(e.requests)
        return out

    def abort(self, request_id: str) -> bool:
        eng = self._owner.get(request_id)
        return eng.abort(request_id) if eng is not None else False

    def has_unfinished_requests(self) -> bool:
        return any(e.has_unfinished_requests() for e in self.replicas)

    def step(self) -> List[RequestUpdate]:
        updates: List[RequestUpdate] = []
        for e in self.replicas:
            if e.has_unfinished_requests():
                updates += e.step()
        for u in updates:  # a request the replica no longer holds has ended (every sample finished or aborted)
            eng = self._owner.get(u.request_id)
            if eng is not None and u.request_id not in eng.requests:
                del self._owner[u.request_id]
        return updates

    run_to_completion = Engine.run_to_completion  # only uses has_unfinished_requests and step

    def stream(self, prompt, sampling_params=None, request_id: Optional[str] = None, n: int = 1, stop=()):
        """Engine.stream on the least-loaded replica (the other replicas' requests wait for step(), as the other
        requests of one engine do)."""
        rid = request_id if request_id is not None else f"dp-{next(self._ids)}"
        if rid in self._owner:
            raise ValueError(f"request_id: {rid!r} is already in use")
        eng = self.least_loaded()
        self._owner[rid] = eng
        try:
            yield from eng.stream(prompt, sampling_params, rid, n=n, stop=stop)
        finally:
            self._owner.pop(rid, None)

    def warmup(self) -> None:
        for e in self.replicas:
            e.warmup()

    def all_step_shapes(self) -> list:
        return self.replicas[0].all_step_shapes()

    def stats(self) -> dict:
        """Counts summed over replicas; rates recomputed from the summed counts; per-replica stats alongside."""
        per = [e.stats() for e in self.replicas]
        out = {k: sum(s[k] for s in per) for k in ("running", "waiting", "pages_in_use", "pages_cached", "num_pages",
                                                   "prefix_hit_tokens", "prefill_tokens", "decode_tokens",
                                                   "preemptions", "evictions", "steps")}
        hit = sum(e.counters["prefix_hit_tokens"] for e in self.replicas)
        query = sum(e.counters["prefix_query_tokens"] for e in self.replicas)
        used = sum(e.counters["kv_used_slots"] for e in self.replicas)
        alloc = sum(e.counters["kv_alloc_slots"] for e in self.replicas)
        out["prefix_hit_rate"] = hit / query if query else 0.0
        out["kv_waste_mean"] = 1 - used / alloc if alloc else 0.0
        out["kv_waste"] = max(s["kv_waste"] for s in per)
        for k in ("spec_proposed_tokens", "spec_accepted_tokens", "spec_verify_runs", "spec_emitted_tokens"):
            if k in per[0]:
                out[k] = sum(s[k] for s in per)
        out["replicas"] = per
        return out


def make_engine(params, cfg: ModelConfig, *, mesh: Optional[Mesh] = None, **engine_options):
    """An Engine (no mesh, or one data row) or a DataParallelEngine (a mesh with several data rows)."""
    if mesh is not None and dict(mesh.shape).get(DATA_AXIS, 1) > 1:
        return DataParallelEngine(params, cfg, mesh=mesh, **engine_options)
    return Engine(params, cfg, mesh=mesh, **engine_options)
