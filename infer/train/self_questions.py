"""Training questions written by the target itself, for distilling a draft from a chat model without a dataset.

    qs = sample_questions(tparams, tcfg, tok, 1024, seed=0, exclude=HELD_OUT_QUESTIONS)

The chat template rendered up to the start of a user turn, plus an opening word or two (`STARTERS`: "What",
"How", "Write", ... so the questions spread over kinds), is continued by the target at temperature 1 with
top-p 0.95, one seed per row, until its end-of-turn token. What comes back is kept when it ended by itself
(not cut at `max_tokens`), has at least three words, and is new (case- and space-insensitive) and not in
`exclude`. Rounds of `batch` rows continue until n are kept or `max_rounds` is reached (0: four times the
rounds n would need if every row were kept), and then fewer are returned, with a line that says so. Deterministic for a given model, seed and batch size.

Why: a draft distilled on a few hundred templated questions (32 topics x 8 templates) memorises them
(models/SMOLLM2_CARD.md: 25% acceptance on its training rows, 9% held out); the target's own questions are
as varied as what it has seen, and cost one batched generation.
"""
from __future__ import annotations

import sys
import time
from typing import List, Sequence

STARTERS = ("What", "How", "Can you", "Write", "Explain", "Why", "Give me", "I", "Please", "Tell me", "Is it",
            "Describe", "Which", "Help me", "Should I", "Create", "Compare", "List", "Who", "When", "Where",
            "Summarize", "Translate", "Suggest", "Do you", "My", "Could you", "In", "Define", "Generate", "Solve",
            "Calculate")
MARK = "\x00QUESTION\x00"


def user_turn_prefix(tok) -> str:
    """The chat template's text up to where a user's message begins (its system prompt included)."""
    text = tok.chat_template.render([{"role": "user", "content": MARK}], add_generation_prompt=False)
    if MARK not in text:
        raise ValueError("the chat template does not render the user's message verbatim; cannot find where it starts")
    return text.split(MARK)[0]


def _norm(q: str) -> str:
    return " ".join(q.lower().split())


def sample_questions(tparams, tcfg, tok, n: int, seed: int = 0, batch: int = 64, max_tokens: int = 48,
                     exclude: Sequence[str] = (), max_rounds: int = 0) -> List[str]:
    """n questions the target writes as a user would (see the module docstring)."""
    from infer.config import SamplingParams
    from infer.generation.batch import generate
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    prefix = user_turn_prefix(tok)
    stops = tok.chat_template.end_of_turn_ids(tok)
    prompts = [tok.encode(prefix + STARTERS[i % len(STARTERS)], add_special_tokens=False) for i in range(batch)]
    seen = {_norm(q) for q in exclude}
    out: List[str] = []
    rounds = max_rounds or 4 * (n // batch + 1)
    for r in range(rounds):
        t0 = time.perf_counter()
        per = [SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=max_tokens, stop_token_ids=stops,
                              seed=seed * 1_000_003 + r * batch + i) for i in range(batch)]
        replies = generate(tparams, tcfg, prompts, per).tokens
        for i, ids in enumerate(replies):
            if not ids or ids[-1] not in stops:
                continue  # cut at max_tokens: not a finished question
            q = (STARTERS[i % len(STARTERS)] + tok.decode(ids[:-1])).strip()
            if len(q.split()) < 3 or _norm(q) in seen:
                continue
            seen.add(_norm(q))
            out.append(q)
        print(f"self questions: {min(len(out), n)}/{n} after round {r + 1} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        if len(out) >= n:
            return out[:n]
    print(f"self questions: only {len(out)} of {n} after {rounds} rounds", file=sys.stderr, flush=True)
    return out
