"""infer: the public Python API of the inference stack.

    cfg = infer.load_config("tiny")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    result = infer.generate(params, cfg, [[1, 2, 3], [4, 5]], infer.SamplingParams(max_new_tokens=16))

Packages, by concern (a token goes config -> io -> generation -> model -> kv -> layers -> pallas_kernels):
config/ (pure data), model/ (params, the ragged step, row view, forward), kv/ (page pools,
AttentionMetadata), sampling/, generation/ (static batch, speculative, text), io/ (checkpoints,
tokenizers), engine/ (serving: block manager, scheduler, Engine, LLM), perf/ (roofline, hardware),
parallel/ (sharding), cli/, bench/, train/.
"""
from infer.config.xla_flags import apply_default_xla_flags

apply_default_xla_flags()  # before anything starts a backend: XLA reads XLA_FLAGS then (infer/config/xla_flags.py)

from infer.config import ConfigError, ModelConfig, RopeScaling, SamplingParams, load_config  # noqa: E402
from infer.kv import AttentionMetadata, MetadataError, SequenceStep, build_metadata, init_pools
from infer.model import (count_params, decode_step, extend, forward, init_cache, init_params, param_logical_axes,
                         prefill, step)
from infer.generation.batch import GenerateResult, generate
from infer.model.quantize import dequantize_params, quantize
from infer.model.layout import for_decode, stack_layers, unstack_layers

# Serving: continuous batching over the page pools (block manager, scheduler, engine, offline LLM).
from infer.engine import CompletionOutput, Engine, RequestError, RequestOutput, RequestUpdate
from infer.engine.llm import LLM

# Performance model and hardware profiles.
from infer.perf import roofline
from infer.perf.hardware import HardwareProfile, load_hardware

# Checkpoints, tokenizers, text in and out.
from infer.io.hf_loader import CheckpointError, load_hf_checkpoint
from infer.io.checkpoint import load_checkpoint, load_model_dir, save_checkpoint
from infer.io.tokenizer import load_tokenizer
from infer.generation.text import TextStream, generate_text
from infer.generation.chat import ChatSession, chat

# Speculative sampling: `infer.speculative` is the exact acceptance rule's module.
from infer.generation import speculative_accept as speculative
from infer.generation.speculative import SpeculativeResult, speculative_generate
from infer.generation.ngram import ngram_speculative_generate
from infer.generation.eagle import eagle_speculative_generate

__all__ = [
    "Engine", "LLM", "RequestError", "RequestUpdate", "RequestOutput", "CompletionOutput",
    "speculative", "speculative_generate", "SpeculativeResult", "ngram_speculative_generate",
    "eagle_speculative_generate",
    "load_hf_checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_model_dir",
    "load_tokenizer", "generate_text", "TextStream", "chat", "ChatSession",
    "roofline", "HardwareProfile", "load_hardware",
    "ConfigError", "ModelConfig", "RopeScaling", "load_config",
    "init_params", "param_logical_axes", "count_params",
    "init_cache", "forward", "prefill", "decode_step", "extend", "step",
    "AttentionMetadata", "MetadataError", "SequenceStep", "build_metadata", "init_pools",
    "SamplingParams", "generate", "GenerateResult", "quantize", "dequantize_params",
    "for_decode", "stack_layers", "unstack_layers",
]
