"""Getting models and text in and out: HF safetensors, orbax checkpoints, tokenizers, streaming detokenization."""
