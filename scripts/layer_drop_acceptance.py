"""How much of SmolLM2-135M-Instruct a draft must keep to reach the 50% acceptance goal (models/SMOLLM2_CARD.md):

    python scripts/layer_drop_acceptance.py 30 24 20 16 12

For each n, the target with only its n most important blocks (the first-round skip-loss ranking of
build/runs/smollm2-draft/prune_report.json, written by `python -m infer.train.smollm2_draft`) and no retraining
predicts the target's own greedy chat replies (the last 16 chat rows of build/runs/smollm2-draft/data.npz),
teacher-forced. At temperature 0 a speculative round accepts exactly the leading run of positions where the
draft's argmax equals the target's token, so the teacher-forced matches give the acceptance at k = 4 directly:
rounds start at the first reply position, accept the run j <= k of matches, and move on by j + 1 (the target's
own token). Prints per-token agreement and that acceptance (accepted / proposed, as the card defines it).
"""
import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from infer.config.paths import REPO_ROOT
from infer.io.checkpoint import load_model_dir
from infer.model.forward import forward
from infer.train.prune import prune

RUN = os.path.join(REPO_ROOT, "build", "runs", "smollm2-draft")


def acceptance_from_matches(match_rows, k: int = 4) -> float:
    """Accepted / proposed drafts of greedy rounds over teacher-forced match vectors (one per reply)."""
    acc = prop = 0
    for m in match_rows:
        i = 0
        while i < len(m):
            j = 0
            while j < k and i + j < len(m) and m[i + j]:
                j += 1
            acc, prop, i = acc + j, prop + k, i + j + 1
    return acc / prop


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("keep", type=int, nargs="+", help="numbers of blocks to keep")
    ap.add_argument("--k", type=int, default=4)
    a = ap.parse_args(argv)
    cfg, params = load_model_dir("smollm2-135m-instruct", dtype="float32")
    with np.load(os.path.join(RUN, "data.npz")) as z:
        tokens, weights = z["tokens_BT1"], z["weights_BT"]
    with open(os.path.join(RUN, "prune_report.json")) as f:
        scores = json.load(f)["layer_skip_scores_by_round"][0]
    chat = np.flatnonzero(weights[:, 0] == 0)[-16:]  # chat rows weigh only their reply (code rows weigh all)
    rank = sorted(range(cfg.n_layers), key=lambda i: -scores[str(i)])
    K, G = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads
    for n in a.keep:
        keep = sorted(rank[:n])
        p, c = prune(params, cfg, keep, [list(range(K))] * n, [[list(range(G))] * K] * n,
                     [list(range(cfg.d_ff))] * n)
        pred = jax.jit(lambda x: jnp.argmax(forward(p, c, x), -1))
        rows = []
        for r in chat:
            sel = weights[r] > 0
            rows.append(np.asarray(pred(jnp.asarray(tokens[r:r + 1, :-1])))[0][sel] == tokens[r, 1:][sel])
        agree = np.concatenate(rows).mean()
        print(f"{n:2d} of {cfg.n_layers} blocks: per-token agreement {agree:.3f}, acceptance at k={a.k} "
              f"{acceptance_from_matches(rows, a.k):.3f}", flush=True)


if __name__ == "__main__":
    main()
