"""The model as pure functions: parameters, the ragged paged step, the row-batch view, the uncached reference."""
from infer.model.forward import forward
from infer.model.params import count_params, init_params, param_logical_axes
from infer.model.rows import capacity, decode_step, extend, extend_rows, init_cache, prefill
from infer.model.step import check_token_ids, run_step, step

__all__ = ["forward", "count_params", "init_params", "param_logical_axes", "capacity", "decode_step", "extend",
           "extend_rows", "init_cache", "prefill", "check_token_ids", "run_step", "step"]
