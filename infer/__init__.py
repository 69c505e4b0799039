"""infer: the public Python API of the inference stack.

    cfg = infer.load_config("tiny")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    result = infer.generate(params, cfg, [[1, 2, 3], [4, 5]], infer.SamplingParams(max_new_tokens=16))

Packages, by concern (a token goes config -> io -> generation -> model -> kv -> layers -> pallas_kernels):
config/ (pure data), model/ (params, the ragged step, row view, forward), kv/ (page pools,
AttentionMetadata), sampling/, generation/ (static batch, speculative, text), io/ (checkpoints,
tokenizers), engine/ (serving: block manager, scheduler, Engine, LLM), perf/ (roofline, hardware),
parallel/ (sharding), cli/, bench/, train/.

The public names below load on first use (PEP 562): `import infer` applies the XLA flags and nothing
else, so a script that only reads a config never pays for the model, the kernels or orbax.
"""
from infer.config.xla_flags import apply_default_xla_flags
from pallas_kernels.lazy_names import lazy_names

apply_default_xla_flags()  # before anything starts a backend: XLA reads XLA_FLAGS then (infer/config/xla_flags.py)

_HOMES = {  # public name -> the module that defines it; a name mapped to a module is that module
    # Serving: continuous batching over the page pools (block manager, scheduler, engine, offline LLM).
    "Engine": "infer.engine.engine", "LLM": "infer.engine.llm", "RequestError": "infer.engine.engine",
    "SpeculativeConfig": "infer.engine.speculation",
    "RequestUpdate": "infer.engine.request", "RequestOutput": "infer.engine.request",
    "CompletionOutput": "infer.engine.request",
    # Speculative sampling: `infer.speculative` is the exact acceptance rule's module.
    "speculative": "infer.generation.speculative_accept", "speculative_generate": "infer.generation.speculative",
    "SpeculativeResult": "infer.generation.speculative", "ngram_speculative_generate": "infer.generation.ngram",
    "eagle_speculative_generate": "infer.generation.eagle",
    # Checkpoints, tokenizers, text in and out.
    "load_hf_checkpoint": "infer.io.hf_loader", "CheckpointError": "infer.io.hf_loader",
    "save_checkpoint": "infer.io.checkpoint", "load_checkpoint": "infer.io.checkpoint",
    "load_model_dir": "infer.io.checkpoint", "load_tokenizer": "infer.io.tokenizer",
    "generate_text": "infer.generation.text", "TextStream": "infer.generation.text",
    "chat": "infer.generation.chat", "ChatSession": "infer.generation.chat",
    # Performance model and hardware profiles.
    "roofline": "infer.perf.roofline", "HardwareProfile": "infer.perf.hardware", "load_hardware": "infer.perf.hardware",
    # Config, the model as functions, the KV metadata, sampling, batch generation, quantization, layout.
    "ConfigError": "infer.config.model_config", "ModelConfig": "infer.config.model_config",
    "RopeScaling": "infer.config.model_config", "load_config": "infer.config.model_config",
    "init_params": "infer.model.params", "param_logical_axes": "infer.model.params", "count_params": "infer.model.params",
    "init_cache": "infer.model.rows", "forward": "infer.model.forward", "prefill": "infer.model.rows",
    "decode_step": "infer.model.rows", "extend": "infer.model.rows", "step": "infer.model.step",
    "AttentionMetadata": "infer.kv.metadata", "MetadataError": "infer.kv.metadata",
    "SequenceStep": "infer.kv.metadata", "build_metadata": "infer.kv.metadata", "init_pools": "infer.kv.pool",
    "SamplingParams": "infer.config.sampling_params", "Constraint": "infer.config.sampling_params",
    "generate": "infer.generation.batch",
    "GenerateResult": "infer.generation.batch", "quantize": "infer.model.quantize",
    "dequantize_params": "infer.model.quantize",
    "for_decode": "infer.model.layout", "stack_layers": "infer.model.layout", "unstack_layers": "infer.model.layout",
}
_MODULE_NAMES = ("speculative", "roofline")  # names that are the module itself, not a name inside it
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES, modules=_MODULE_NAMES, subpackages=True)
