"""Configuration as pure data: model shapes (ModelConfig), per-request sampling settings (SamplingParams) and
the dtype names every dtype setting accepts (dtypes.py).

YAML files in configs/ only name values; every validity rule lives in these dataclasses.

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {  # public name -> the module that defines it
    "DTYPES": "infer.config.dtypes",
    "MODEL_CONFIG_DIR": "infer.config.model_config",
    "ConfigError": "infer.config.model_config",
    "ModelConfig": "infer.config.model_config",
    "RopeScaling": "infer.config.model_config",
    "load_config": "infer.config.model_config",
    "CONFIG_DIR": "infer.config.paths",
    "REPO_ROOT": "infer.config.paths",
    "SamplingParams": "infer.config.sampling_params",
    "Constraint": "infer.config.sampling_params",
    "as_per_request": "infer.config.sampling_params",
    "batch_arrays": "infer.config.sampling_params",
    "KV_CACHE_DTYPES": "infer.config.dtypes",
    "dtype_name": "infer.config.dtypes",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)
