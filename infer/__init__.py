"""infer: the public Python API of the inference stack.

    cfg = infer.load_config("tiny")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    result = infer.generate(params, cfg, [[1, 2, 3], [4, 5]], infer.SamplingParams(max_new_tokens=16))
"""
from infer.cache import init_cache
from infer.config import ConfigError, ModelConfig, RopeScaling, load_config
from infer.model import decode_step, extend, forward, prefill
from infer.params import count_params, init_params, param_logical_axes
from infer.sampling import SamplingParams
from infer.generate import GenerateResult, generate

# Performance model and hardware profiles (roofline helper).
from infer import roofline
from infer.hardware import HardwareProfile, load_hardware

# Checkpoints: Hugging Face safetensors loading (checkpoints helper).
from infer.hf_loader import CheckpointError, load_hf_checkpoint
from infer.checkpoint import load_checkpoint, save_checkpoint
from infer.tokenizer import load_tokenizer
from infer.text import TextStream, generate_text

# Speculative sampling (speculative helper). Note: the name infer.speculative_generate is the function;
# import its module's other names with `from infer.speculative_generate import ...`.
from infer import speculative
from infer.speculative_generate import SpeculativeResult, speculative_generate

__all__ = [
    "speculative", "speculative_generate", "SpeculativeResult",
    "load_hf_checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint",
    "load_tokenizer", "generate_text", "TextStream",
    "roofline", "HardwareProfile", "load_hardware",
    "ConfigError", "ModelConfig", "RopeScaling", "load_config",
    "init_params", "param_logical_axes", "count_params",
    "init_cache", "forward", "prefill", "decode_step", "extend",
    "SamplingParams", "generate", "GenerateResult",
]
