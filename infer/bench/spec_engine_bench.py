"""Speculative decoding in the engine, side by side: the same requests through an Engine with and without
prompt-lookup speculation (SmolLM2-135M-Instruct on this machine, float32, greedy), alternating rounds.

    python -m infer.bench.spec_engine_bench [--rounds 3] [--k 4] [--max-new 160] [--only edit,chat,chat16]
    python -m infer.bench.spec_engine_bench --step-costs 1,2,4,8,16   # the off-switches' thresholds

Workloads (chat template, temperature 0, each checked for identical text with speculation on and off):
  edit     one streamed request: rename a variable in ~1,500 characters of Python (the answer copies the prompt)
  chat     one streamed open question (little to copy)
  chat16   16 open questions at once (the batch off-switch's case)
Each round runs every workload once without and once with speculation (order alternating per round, so a
load change on the shared machine hits both); the table has the median tokens/s per workload and setting.
Both engines are warmed up on the same requests first (compiles are not timed).
"""
from __future__ import annotations

import argparse
import statistics
import time

CODE = '''def summarize_orders(orders, tax_rate=0.2):
    """Totals per customer, with tax, skipping cancelled orders."""
    total = 0.0
    per_customer = {}
    for order in orders:
        if order.get("status") == "cancelled":
            continue
        amount = order["quantity"] * order["unit_price"]
        amount = amount * (1 + tax_rate)
        total = total + amount
        name = order["customer"]
        per_customer[name] = per_customer.get(name, 0.0) + amount
    average = total / len(per_customer) if per_customer else 0.0
    report = {"total": total, "average": average, "customers": per_customer}
    return report


def print_report(report):
    print("Total:", report["total"])
    print("Average:", report["average"])
    for name, amount in sorted(report["customers"].items()):
        print(name, amount)


def main():
    orders = [
        {"customer": "ann", "quantity": 2, "unit_price": 3.5, "status": "paid"},
        {"customer": "bob", "quantity": 1, "unit_price": 10.0, "status": "cancelled"},
        {"customer": "ann", "quantity": 5, "unit_price": 1.25, "status": "paid"},
    ]
    report = summarize_orders(orders)
    print_report(report)
'''
EDIT = f"Rename the variable `total` to `grand_total` in this code. Reply with the whole code.\n\n```python\n{CODE}```"
QUESTIONS = ["What are three good habits for staying healthy?", "Why is the sky blue?",
             "Give me some tips for learning a new language.", "What is the difference between a virus and a bacterium?",
             "How do airplanes stay in the air?", "What should I pack for a weekend hiking trip?",
             "Explain what a black hole is.", "How can I sleep better?", "What is photosynthesis?",
             "Suggest a name for a coffee shop and explain it.", "Why do cats purr?", "How does a rainbow form?",
             "What makes a good team leader?", "Describe the water cycle.", "How do vaccines work?",
             "What are the benefits of reading books?"]


def run_workload(engine, prompts, sp):
    """Tokens/s of the whole workload (first token included) and the texts."""
    t = time.perf_counter()
    if len(prompts) == 1:  # one streamed request
        updates = list(engine.stream(prompts[0], sp))
        outs = [updates[-1].output]
    else:
        ids = [engine.add_request(p, sp) for p in prompts]
        got = engine.run_to_completion()
        outs = [got[i] for i in ids]
    dt = time.perf_counter() - t
    return sum(len(o.token_ids) for o in outs) / dt, [o.text for o in outs]


class _AlwaysPropose:
    """A proposer that always proposes k tokens (the last one repeated): verify steps at every step."""

    def propose(self, histories, ks):
        return [[h[-1]] * k for h, k in zip(histories, ks)]


def step_costs(params, cfg, batches, k, steps=12):
    """Seconds per decode step and per verify step (k proposals per sequence) at each batch size, alternating."""
    import infer
    from infer.engine.speculation import SpeculativeConfig
    print(f"batch  decode_ms  verify_ms(k={k})  ratio  (break-even tokens per verify run)")
    for b in batches:
        opts = dict(num_pages=b * 32, page_size=16, max_num_seqs=max(b, 1), max_num_batched_tokens=max(256, b),
                    max_model_len=512)
        engs = {"off": infer.Engine(params, cfg, **opts),
                "on": infer.Engine(params, cfg, **opts, speculative=SpeculativeConfig(
                    k=k, max_batch=b, min_accepted=0.0))}
        engs["on"].spec.proposer = _AlwaysPropose()
        sp = infer.SamplingParams(temperature=0.0, max_new_tokens=300)
        times = {}
        for name, eng in engs.items():
            for i in range(b):
                eng.add_request([1 + (7 * i + j) % 500 for j in range(128)], sp)
            while any(s.is_prefill for s in eng.scheduler.running) or eng.scheduler.waiting:
                eng.step()
            for _ in range(3):
                eng.step()  # compile / warm the decode shape
            times[name] = []
        for r in range(steps):
            for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                t = time.perf_counter()
                engs[name].step()
                times[name].append(time.perf_counter() - t)
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        print(f"{b:>5}  {off * 1e3:>9.1f}  {on * 1e3:>15.1f}  {on / off:>5.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=160)
    ap.add_argument("--only", default="edit,chat,chat16")
    ap.add_argument("--step-costs", default=None, help="batch sizes: time decode vs verify steps instead")
    args = ap.parse_args(argv)
    import infer
    from infer.engine.speculation import SpeculativeConfig
    cfg, params = infer.load_model_dir(args.model)
    if args.step_costs:
        step_costs(params, cfg, [int(b) for b in args.step_costs.split(",")], args.k)
        return 0
    tok = infer.load_tokenizer(args.model, vocab_size=cfg.vocab_size)
    template = tok.chat_template
    eot = template.end_of_turn_ids(tok)
    enc = lambda text: template.encode(tok, [{"role": "user", "content": text}])
    work = {"edit": [enc(EDIT)], "chat": [enc(QUESTIONS[0])], "chat16": [enc(q) for q in QUESTIONS]}
    names = [w for w in args.only.split(",") if w]
    sp = {w: infer.SamplingParams(temperature=0.0, max_new_tokens=args.max_new if w != "chat16" else 64,
                                  stop_token_ids=eot) for w in names}
    opts = dict(num_pages=16 * 64, page_size=16, max_num_seqs=16, max_num_batched_tokens=256, max_model_len=1024,
                tokenizer=tok)
    engines = {"off": infer.Engine(params, cfg, **opts),
               "ngram": infer.Engine(params, cfg, **opts, speculative=SpeculativeConfig("ngram", k=args.k))}
    texts, speed = {}, {(w, e): [] for w in names for e in engines}
    for w in names:  # warm-up: compiles the shapes these requests use
        for e, eng in engines.items():
            texts[w, e] = run_workload(eng, work[w], sp[w])[1]
    for r in range(args.rounds):
        for w in names:
            for e in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
                tps, got = run_workload(engines[e], work[w], sp[w])
                assert got == texts[w, e], f"{w} {e}: round {r} text differs from the warm-up's"
                speed[w, e].append(tps)
    print(f"SmolLM2 on {cfg.dtype}, greedy, k={args.k}, {args.rounds} alternating rounds, median tokens/s")
    print(f"{'workload':<10}{'off':>10}{'ngram':>10}{'ratio':>8}  identical text")
    for w in names:
        off, on = statistics.median(speed[w, "off"]), statistics.median(speed[w, "ngram"])
        print(f"{w:<10}{off:>10.1f}{on:>10.1f}{on / off:>7.2f}x  {texts[w, 'off'] == texts[w, 'ngram']}")
    s = engines["ngram"].stats()
    print({k: v for k, v in s.items() if k.startswith("spec_")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
