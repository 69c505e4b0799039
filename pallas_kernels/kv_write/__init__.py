"""Writing a step's keys and values into the layer-stacked page pools, beside the pure-JAX twin.

    write_reference.py  the twin: a scatter by slot (padding slots dropped)
    write_gpu.py        Triton: k and v of every (token, kv head) stored in one kernel, in place
    dispatch.py         the GPU kernel on a GPU target, the twin elsewhere

Public names load on first use (pallas_kernels/lazy_names.py).
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {
    "write_pages": "pallas_kernels.kv_write.dispatch",
    "write_pages_reference": "pallas_kernels.kv_write.write_reference",
    "write_pages_gpu": "pallas_kernels.kv_write.write_gpu",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)
