"""An EAGLE draft (infer/generation/eagle.py) for SmolLM2-135M-Instruct, or any loaded target: one block
that reads the target's final features.

    python -m infer.train.eagle_draft                      # configs/train/smollm2_eagle.yaml
    python -m infer.train.eagle_draft --steps 20            # a short run

    cfg, params = load_smollm2_draft("models/smollm2-eagle")   # + the target's embedding (shared)

Recipe (the YAML names the values; `EagleRecipe` validates them):
  1. data: the pruned draft's (infer/train/smollm2_draft.py `build_data`: the target's greedy replies
     to training questions — templated ones and `data.self_questions` the target writes itself — loss on
     the reply, plus code windows, and the target's top-k logits),
     and the target's final features at every position (`target_features`, computed here);
  2. draft: the target's config with one block and `feature_input`; the block (and final norm)
     start as the target's block `eagle.init_layer`, the fuse projection [2D, D] as
     [I; I] / 2 plus noise (the mean of feature and embedding);
  3. train (`eagle_loss`, the project's optax loop `infer.train.distill.distill_prebuilt`): the draft
     at pair t reads (f_t, x_t+1) and must give f_t+1: smooth-L1 to the target's feature plus KL from
     the target's top-k next-token distribution at t+1 (the draft's logits f^ @ E over those k
     tokens), weighted by the data's reply/code weights. The embedding (= LM head) is frozen;
  4. ship: the draft without its embedding, in bfloat16 (smollm2_draft.save_draft).

`HELD_OUT_QUESTIONS` are never trained on (infer.train.measure_smollm2_speculative measures on them).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from infer.config.model_config import ModelConfig
from infer.config.paths import REPO_ROOT
from infer.model.forward import forward_hidden
from infer.train.config import TrainConfig
from infer.train.smollm2_draft import SHARED, DataConfig, build_data, read_recipe, require, save_draft, split_rows

EAGLE_DIR = os.path.join(REPO_ROOT, "models", "smollm2-eagle")


@dataclasses.dataclass(frozen=True)
class EagleConfig:
    init_layer: int = -1  # the target block the draft's block starts from (negative: from the end)
    reg_weight: float = 1.0  # smooth-L1 feature regression
    kl_weight: float = 0.1  # KL(target top-k || draft over those tokens)
    temperature: float = 1.0

    def __post_init__(self):
        require(isinstance(self.init_layer, int) and not isinstance(self.init_layer, bool), "eagle.init_layer",
                f"must be an int, got {self.init_layer!r}")
        require(self.reg_weight >= 0 and self.kl_weight >= 0 and self.reg_weight + self.kl_weight > 0,
                "eagle.reg_weight", f"weights must be >= 0 and not both 0, got {self.reg_weight}, {self.kl_weight}")
        require(self.temperature > 0, "eagle.temperature", f"must be > 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class EagleRecipe:
    target: str
    data: DataConfig
    train: TrainConfig  # seq_len = T tokens per row
    eagle: EagleConfig

    def __post_init__(self):
        require(self.data.val_rows < self.data.chat_prompts + self.data.code_windows, "data.val_rows",
                f"must be fewer than the rows ({self.data.chat_prompts + self.data.code_windows})")


def load_recipe(name_or_path: str = "smollm2_eagle") -> EagleRecipe:
    """configs/train/<name>.yaml (or a path) as a validated EagleRecipe; errors name the field."""
    return read_recipe(name_or_path, EagleRecipe, {"data": DataConfig, "train": TrainConfig, "eagle": EagleConfig})


def draft_config(tcfg: ModelConfig) -> ModelConfig:
    return tcfg.replace(n_layers=1, feature_input=True, name=f"{tcfg.name or 'target'}-eagle")


def init_draft(tparams, tcfg: ModelConfig, init_layer: int, seed: int = 0):
    """(draft params, draft cfg): one block copied from the target's block init_layer, the target's final norm
    and embedding (shared), fuse = [I; I] / 2 + small noise."""
    cfg = draft_config(tcfg)
    D = tcfg.d_model
    if not -tcfg.n_layers <= init_layer < tcfg.n_layers:
        raise ValueError(f"eagle.init_layer: {init_layer} is not a block of the target ({tcfg.n_layers} blocks: "
                         f"0..{tcfg.n_layers - 1}, or -1..-{tcfg.n_layers} from the end)")
    layer = init_layer % tcfg.n_layers
    eye = np.eye(D, dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal((2 * D, D)).astype(np.float32) * (0.02 / np.sqrt(D))
    params = {"embed": tparams["embed"], "final_norm": tparams["final_norm"],
              "layers": jax.tree_util.tree_map(lambda x: x[layer:layer + 1], tparams["layers"]),
              "fuse": {"kernel": jnp.asarray(np.concatenate([eye, eye]) / 2 + noise, cfg.jnp_dtype),
                       "bias": jnp.zeros((D,), cfg.jnp_dtype)}}
    return params, cfg


def target_features(tparams, tcfg: ModelConfig, tokens_NT1, batch: int = 8):
    """The target's final features [N, T, D] (float32) at every input position of tokens [N, T+1]."""
    feats = []
    for i in range(0, len(tokens_NT1), batch):
        _, h = forward_hidden(tparams, tcfg, jnp.asarray(tokens_NT1[i:i + batch, :-1]))
        feats.append(np.asarray(h, np.float32))
    return np.concatenate(feats)


def eagle_loss(params, cfg: ModelConfig, frozen, batch, ec: EagleConfig):
    """Weighted mean over pairs t of reg_weight * smooth-L1(f^_t+1, f_t+1) + kl_weight * tau^2 * KL(target
    top-k at t+1 || draft over the same k tokens).

    batch: tokens_BT1 [B, T+1]; weights_BT [B, T] (weight of position t predicting token t+1); top_ids_BTK,
    top_logits_BTK [B, T, Kt] (the target's largest logits at each position); feats_BTD [B, T, D] (the
    target's features). Pair t (t < T-1) reads (f_t, x_t+1) and is scored against position t+1."""
    p = {**params, **frozen}
    tok_BT1 = batch["tokens_BT1"]
    F_BTD = batch["feats_BTD"]
    T = F_BTD.shape[1]
    _, fhat_BtD = forward_hidden(p, cfg, tok_BT1[:, 1:T], F_BTD[:, :T - 1])  # t = 0..T-2 -> f^_t+1
    diff = fhat_BtD.astype(jnp.float32) - F_BTD[:, 1:]
    ad = jnp.abs(diff)
    reg_Bt = jnp.mean(jnp.where(ad < 1.0, 0.5 * diff * diff, ad - 0.5), axis=-1)
    E_VD = p["embed"]["embedding"].astype(jnp.float32)
    ids_BtK = batch["top_ids_BTK"][:, 1:]
    zs_BtK = jnp.einsum("btd,btkd->btk", fhat_BtD.astype(jnp.float32), E_VD[ids_BtK])
    tau = ec.temperature
    logq = jax.nn.log_softmax(zs_BtK / tau, axis=-1)
    logp = jax.nn.log_softmax(batch["top_logits_BTK"][:, 1:] / tau, axis=-1)
    kl_Bt = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    w_Bt = batch["weights_BT"][:, 1:].astype(jnp.float32)
    per_Bt = ec.reg_weight * reg_Bt + ec.kl_weight * tau ** 2 * kl_Bt
    return (per_Bt * w_Bt).sum() / jnp.maximum(w_Bt.sum(), 1.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train an EAGLE draft for SmolLM2-135M-Instruct and ship it.")
    ap.add_argument("--config", default="smollm2_eagle", help="configs/train/<name>.yaml or a path")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    a = ap.parse_args(argv)
    recipe = load_recipe(a.config)
    if a.steps is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=a.steps))
    from infer.io.checkpoint import load_model_dir
    from infer.io.tokenizer import load_tokenizer
    from infer.model.params import count_params
    from infer.train.distill import distill_prebuilt

    tc = recipe.train
    tcfg, tparams = load_model_dir(recipe.target, dtype="float32")
    tok = load_tokenizer(recipe.target)
    arrays = build_data(tparams, tcfg, tok, recipe, os.path.join(tc.run_dir, "data.npz"))
    t0 = time.perf_counter()
    arrays["feats_BTD"] = target_features(tparams, tcfg, arrays["tokens_BT1"])
    print(f"target features {arrays['feats_BTD'].shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    dparams, dcfg = init_draft(tparams, tcfg, recipe.eagle.init_layer, tc.seed)
    frozen = {k: dparams[k] for k in SHARED}
    trainable = {k: v for k, v in dparams.items() if k not in SHARED}
    print(f"draft {dcfg.name}: {count_params(trainable) / 1e6:.2f}M parameters besides the shared embedding",
          flush=True)
    train, val = split_rows(arrays, recipe.data.val_rows, tc.seed)
    trained, _ = distill_prebuilt(trainable, dcfg, frozen, train, val, tc, name="smollm2-eagle",
                                  loss_fn=lambda p, b: eagle_loss(p, dcfg, frozen, b, recipe.eagle))
    save_draft(tc.export_dir, dcfg.replace(name="smollm2-135m-eagle"), {**trained, **frozen}, recipe.target)
    print(f"exported {tc.export_dir}", flush=True)


if __name__ == "__main__":
    main()
