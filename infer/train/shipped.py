"""Save and load the shipped models (models/target, models/draft) and their tokenizer.

Uses the project's checkpoint format (`infer.checkpoint.save_checkpoint` /
`load_checkpoint`) when it is available. Otherwise the layout is:
<dir>/config.json (ModelConfig fields) and <dir>/params (an orbax
StandardCheckpointer tree of the infer.params tree). Parameters are stored in
bfloat16 (half the bytes; the shipped checkpoints stay a few MB) and cast to
cfg.dtype (float32) on load; all reported numbers are measured on the loaded,
stored weights.
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from infer.config import ModelConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
TOKENIZER_PATH = os.path.join(MODELS_DIR, "tokenizer.json")


def _project_checkpoint():
    try:
        from infer import checkpoint
    except ImportError:
        return None
    return checkpoint if hasattr(checkpoint, "save_checkpoint") and hasattr(checkpoint, "load_checkpoint") else None


STORAGE_DTYPE = "bfloat16"


def save_model(path: str, cfg: ModelConfig, params) -> None:
    params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, STORAGE_DTYPE), params)
    ck = _project_checkpoint()
    if ck is not None:
        ck.save_checkpoint(path, cfg, params)
        return
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.path.join(path, "params")), params, force=True)


def load_model(path: str):
    """(ModelConfig, params) from a directory written by save_model."""
    if not os.path.isdir(path):
        path2 = os.path.join(MODELS_DIR, path)
        if not os.path.isdir(path2):
            raise FileNotFoundError(f"model: no checkpoint directory {path!r} (nor {path2!r})")
        path = path2
    if os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "params")):
        with open(os.path.join(path, "config.json")) as f:
            cfg = ModelConfig.from_dict(json.load(f))
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.abspath(os.path.join(path, "params")))
        return cfg, jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, cfg.dtype), params)
    ck = _project_checkpoint()
    if ck is None:
        raise FileNotFoundError(f"model: {path} has no config.json + params/ and infer.checkpoint is unavailable")
    out = ck.load_checkpoint(path)
    cfg, params = (out[0], out[1]) if isinstance(out, tuple) else (out.cfg, out.params)
    return cfg, jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, cfg.dtype), params)


def load_tokenizer(path: str = TOKENIZER_PATH):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)
