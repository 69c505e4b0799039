"""Save and load the shipped models (models/target, models/draft) and their tokenizer.

Checkpoints use the project's format (infer.io.checkpoint: model_config.json +
orbax params/). The weights are stored in bfloat16 (half the bytes, so the
shipped checkpoints stay a few MB; the stored config says dtype bfloat16) and
are cast to float32 on load for CPU inference; every reported number is
measured on the loaded, stored weights.
"""
from __future__ import annotations

import json
import os

import jax

from infer.io.checkpoint import load_model_dir, save_checkpoint
from infer.config.model_config import ModelConfig
from infer.config.paths import REPO_ROOT

MODELS_DIR = os.path.join(REPO_ROOT, "models")
TOKENIZER_PATH = os.path.join(MODELS_DIR, "tokenizer.json")
STORAGE_DTYPE = "bfloat16"


def save_model(path: str, cfg: ModelConfig, params) -> None:
    """Store params in bfloat16 under `path` (replacing what is there)."""
    params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, STORAGE_DTYPE), params)
    save_checkpoint(path, cfg.replace(dtype=STORAGE_DTYPE), params, overwrite=True)


def load_model(path: str, dtype: str = "float32"):
    """(ModelConfig, params) cast to `dtype`; a relative path is tried as given, then under models/."""
    if not os.path.isdir(path) and os.path.isdir(os.path.join(MODELS_DIR, path)):
        path = os.path.join(MODELS_DIR, path)
    return load_model_dir(path, dtype=dtype)


def load_tokenizer(path: str = TOKENIZER_PATH):
    """The raw `tokenizers.Tokenizer` (byte-level BPE) shipped beside the models."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)


def load_text_tokenizer(path: str = TOKENIZER_PATH):
    """The same tokenizer as an infer.io.tokenizer.HFTokenizer (what infer.generation.text streams with), EOS = <|endoftext|>."""
    from infer.io.tokenizer import HFTokenizer
    from infer.train.train_tokenizer import EOS
    tok = HFTokenizer(path)
    tok.eos_ids = (tok.token_to_id(EOS),)
    return tok


def report_json(result: dict, path=None) -> None:
    """Print a measured result as JSON and, when `path` is given, write it there (models/*.json)."""
    print(json.dumps(result, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
