"""Training configuration: frozen, self-validating dataclasses read from configs/train/*.yaml.

A YAML file has three sections: `model` (ModelConfig fields), `train` (TrainConfig
fields) and, for a distilled draft, `distill` (DistillConfig fields). Errors name
the field.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import yaml

from infer.config.model_config import ConfigError, ModelConfig
from infer.config.paths import REPO_ROOT

TRAIN_CONFIG_DIR = os.path.join(REPO_ROOT, "configs", "train")


def _require(cond, field, msg):
    if not cond:
        raise ConfigError(f"{field}: {msg}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int  # B sequences per step
    seq_len: int  # T tokens per sequence
    peak_lr: float
    warmup_steps: int
    end_lr_fraction: float = 0.1  # cosine decays to peak_lr * this
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    eval_every: int = 200
    eval_windows: int = 32  # validation windows of seq_len tokens per periodic eval
    ckpt_every: int = 200
    seed: int = 0
    val_fraction: float = 0.05
    tokenizer: str = "models/tokenizer.json"
    run_dir: str = "build/runs/target"  # orbax CheckpointManager (resumable training state)
    export_dir: str = "models/target"  # final parameters (shipped)

    def __post_init__(self):
        for f in ("steps", "batch_size", "seq_len", "eval_every", "eval_windows", "ckpt_every"):
            v = getattr(self, f)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"train.{f}", f"must be an int > 0, got {v!r}")
        _require(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps < self.steps, "train.warmup_steps",
                 f"must be an int in [0, steps={self.steps}), got {self.warmup_steps!r}")
        _require(self.peak_lr > 0, "train.peak_lr", f"must be > 0, got {self.peak_lr}")
        _require(0 <= self.end_lr_fraction <= 1, "train.end_lr_fraction", f"must be in [0, 1], got {self.end_lr_fraction}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(0 < self.b1 < 1 and 0 < self.b2 < 1, "train.b1", f"b1, b2 must be in (0, 1), got {self.b1}, {self.b2}")
        _require(self.clip_norm > 0, "train.clip_norm", f"must be > 0, got {self.clip_norm}")
        _require(0 < self.val_fraction < 1, "train.val_fraction", f"must be in (0, 1), got {self.val_fraction}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    teacher: str  # directory of the teacher checkpoint
    temperature: float = 1.0  # softening of both distributions in the KL term
    kl_weight: float = 1.0  # loss = kl_weight * KL(teacher || student) + ce_weight * CE(data)
    ce_weight: float = 0.1

    def __post_init__(self):
        _require(self.temperature > 0, "distill.temperature", f"must be > 0, got {self.temperature}")
        _require(self.kl_weight >= 0 and self.ce_weight >= 0 and self.kl_weight + self.ce_weight > 0,
                 "distill.kl_weight", f"weights must be >= 0 and not both 0, got {self.kl_weight}, {self.ce_weight}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    train: TrainConfig
    distill: Optional[DistillConfig] = None
    name: str = ""

    def __post_init__(self):
        _require(self.train.seq_len <= self.model.max_seq_len, "train.seq_len",
                 f"{self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")


def _section(d, key, cls, path):
    sec = d.get(key)
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ConfigError(f"{key}: expected a mapping in {path}")
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(sec) - known)
    if bad:
        raise ConfigError(f"{key}.{bad[0]}: unknown field (known: {sorted(known)})")
    return cls(**sec)


def load_run_config(name_or_path: str) -> RunConfig:
    path = name_or_path if os.path.exists(name_or_path) else os.path.join(TRAIN_CONFIG_DIR, f"{name_or_path}.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no training config {name_or_path!r} (looked in {TRAIN_CONFIG_DIR})")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    bad = sorted(set(d) - {"model", "train", "distill", "name"})
    if bad:
        raise ConfigError(f"{bad[0]}: unknown section in {path} (known: model, train, distill, name)")
    if "model" not in d or "train" not in d:
        raise ConfigError(f"model/train: both sections are required in {path}")
    name = d.get("name") or os.path.splitext(os.path.basename(path))[0]
    model = ModelConfig.from_dict({"name": name, **d["model"]})
    return RunConfig(model=model, train=_section(d, "train", TrainConfig, path),
                     distill=_section(d, "distill", DistillConfig, path), name=name)
