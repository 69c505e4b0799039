"""Our own checkpoint format: orbax-checkpoint for the weights, JSON for the config.

    save_checkpoint("ckpt/llama3-8b", cfg, params)
    cfg, params = load_checkpoint("ckpt/llama3-8b")

Layout of a checkpoint directory::

    model_config.json   ModelConfig.to_dict() (+ format version), written last: its presence
                        means the weights were completely written
    params/             orbax StandardCheckpointer directory of the parameter tree

Loading checks the stored tree against the one the config implies (leaf
names, shapes, dtypes) before reading any data, and every failure is a
`CheckpointError` naming the path and, for a tensor, its name and both shapes.
"""
import json
import os
from typing import Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from infer.config.model_config import ConfigError, ModelConfig
from infer.io.dtype_policy import load_dtype
from infer.io.hf_loader import CheckpointError
from infer.model.layout import stack_layers
from infer.model.params import init_params

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def _expected_tree(cfg: ModelConfig) -> dict:
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def _flat(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in kp): v for kp, v in leaves}


def check_params(cfg: ModelConfig, params, where: str, what: str = "checkpoint has") -> None:
    """Raise CheckpointError unless params has exactly the leaves, shapes and dtypes cfg implies."""
    want, got = _flat(_expected_tree(cfg)), _flat(params)
    missing = sorted(set(want) - set(got))
    if missing:
        raise CheckpointError(f"{where}: missing tensor {missing[0]!r}" +
                              (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(got) - set(want))
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor {extra[0]!r} for this model config")
    for name, w in want.items():
        g = got[name]
        if tuple(g.shape) != tuple(w.shape):
            raise CheckpointError(f"{where}: tensor {name!r}: shape mismatch: {what} {list(g.shape)}, "
                                  f"config implies {list(w.shape)}")
        if np.dtype(g.dtype) != np.dtype(w.dtype):
            raise CheckpointError(f"{where}: tensor {name!r}: dtype mismatch: {what} {np.dtype(g.dtype)}, "
                                  f"config implies {np.dtype(w.dtype)}")


def save_checkpoint(path: str, cfg: ModelConfig, params, overwrite: bool = False) -> str:
    """Write cfg and params under directory `path` (refused if it exists, unless overwrite); always in the
    stacked layout (an unrolled tree, infer/model/layout.py, is stacked first)."""
    path = os.path.abspath(os.fspath(path))
    check_params(cfg, params, "save_checkpoint", what="params have")
    cfg, params = stack_layers(cfg, params)
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
        cfg_file = os.path.join(path, CONFIG_FILE)
        if os.path.exists(cfg_file):
            os.remove(cfg_file)  # the checkpoint is incomplete until the new config is written
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, PARAMS_DIR), params, force=overwrite)
        ckptr.wait_until_finished()
    tmp = os.path.join(path, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format_version": FORMAT_VERSION, "model_config": cfg.to_dict()}, f, indent=2)
    os.replace(tmp, os.path.join(path, CONFIG_FILE))
    return path


def read_checkpoint_config(path: str) -> ModelConfig:
    path = os.path.abspath(os.fspath(path))
    cfg_file = os.path.join(path, CONFIG_FILE)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not os.path.exists(cfg_file):
        raise CheckpointError(f"{cfg_file}: missing: not a checkpoint written by save_checkpoint, or an "
                              f"incomplete one (the config is written after the weights)")
    try:
        with open(cfg_file) as f:
            d = json.load(f)
        if d.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{cfg_file}: format_version {d.get('format_version')!r}, expected "
                                  f"{FORMAT_VERSION}")
        return ModelConfig.from_dict(d["model_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable model config ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str, device=None) -> Tuple[ModelConfig, dict]:
    """(cfg, params) from a directory written by save_checkpoint; arrays on `device` (default device)."""
    path = os.path.abspath(os.fspath(path))
    cfg = read_checkpoint_config(path)
    params_dir = os.path.join(path, PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{params_dir}: missing (the checkpoint has a config but no weights)")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            stored = ckptr.metadata(params_dir).item_metadata
        except Exception as e:  # orbax raises several types for a damaged directory
            raise CheckpointError(f"{params_dir}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None
        check_params(cfg, stored, params_dir)
        sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
        target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                        _expected_tree(cfg))
        try:
            params = ckptr.restore(params_dir, target)
        except Exception as e:
            raise CheckpointError(f"{params_dir}: cannot restore the weights, the checkpoint is damaged or "
                                  f"incomplete ({type(e).__name__}: {str(e)[:500]})") from None
    return cfg, params


def load_model_dir(path: str, dtype=None, weight_format=None) -> Tuple[ModelConfig, dict]:
    """Any checkpoint: ours (model_config.json), Hugging Face (config.json), or GGUF (a .gguf file, a directory
    holding one, or a model name from infer.io.model_names; dequantized, float32 unless dtype says otherwise).

    dtype None keeps the checkpoint's dtype, except that a bfloat16/float16 checkpoint loads as float32 on a
    CPU backend (with a warning; infer/io/dtype_policy.py); an explicit dtype is always honoured.
    weight_format: None keeps what the checkpoint stores (GGUF: dequantized); "native" keeps a GGUF file's
    Q8_0/Q4_0/Q4_1 projections in their own format; a format name of pallas_kernels/matmul/formats.py ("int8",
    "int4-g128", ...) quantizes the projections after loading (round to nearest, infer.quantize)."""
    if weight_format is not None and weight_format != "native":
        from infer.model.quantize import quantize
        cfg, params = load_model_dir(path, dtype=dtype)
        if cfg.weight_format is not None:
            raise ValueError(f"weight_format: {path} is stored as {cfg.weight_format!r} already")
        return tuple(reversed(quantize(params, cfg, weight_format)))
    from infer.io.model_names import resolve_gguf
    gguf_path = resolve_gguf(path)
    if gguf_path is not None:
        from infer.io.gguf_loader import load_gguf
        return load_gguf(gguf_path, dtype=dtype, native=weight_format == "native")
    if weight_format == "native":
        raise ValueError(f"weight_format='native': only GGUF files store quantized weights natively; {path} is not "
                         f"one (pass a format name such as 'int8' to quantize it after loading)")
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        cfg, params = load_checkpoint(path)
        dtype = load_dtype(cfg.dtype, dtype)
        if dtype != cfg.dtype:
            cfg = cfg.replace(dtype=dtype)
            params = jax.tree_util.tree_map(lambda x: x.astype(cfg.jnp_dtype), params)
        return cfg, params
    from infer.io.hf_config import hf_to_model_config, read_config_json
    from infer.io.hf_loader import load_hf_checkpoint
    return load_hf_checkpoint(path, dtype=load_dtype(hf_to_model_config(read_config_json(path)).dtype, dtype))
