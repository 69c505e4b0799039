"""Configuration as pure data: model shapes (ModelConfig) and per-request sampling settings (SamplingParams).

YAML files in configs/ only name values; every validity rule lives in these dataclasses.
"""
from infer.config.model_config import (DTYPES, MODEL_CONFIG_DIR, ConfigError, ModelConfig, RopeScaling,
                                       load_config)
from infer.config.paths import CONFIG_DIR, REPO_ROOT
from infer.config.sampling_params import SamplingParams, as_per_request, batch_arrays

__all__ = ["DTYPES", "MODEL_CONFIG_DIR", "ConfigError", "ModelConfig", "RopeScaling", "load_config",
           "CONFIG_DIR", "REPO_ROOT", "SamplingParams", "as_per_request", "batch_arrays"]
