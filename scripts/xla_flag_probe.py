"""XLA CPU flags against each other on SmolLM2's decode step (BENCHMARKS.md, "Kept: 512-bit vectors"):

    python scripts/xla_flag_probe.py [--batch 1] [--rounds 3] [--variant ""] [--variant "--xla_cpu_prefer_vector_width=512"]

Each round runs every variant in a fresh process (XLA reads XLA_FLAGS when its backend starts), one after the
other, so a machine whose speed drifts affects them alike. A child sets XLA_FLAGS to the variant exactly, with
INFER_NO_XLA_FLAGS=1 so `import infer` adds nothing; it loads SmolLM2-135M in float32 (unrolled layout) and reports
`cpu_chat_bench.run_ours`' median decode ms/step over --repeats runs of 64-token text prompts, 128 new tokens.
Prints each round and the median per variant. Default variants: no flags, and the one `import infer` sets.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = ("import json, sys; from infer.bench.cpu_chat_bench import load_ours, run_ours, text_prompts; "
         "B, repeats = int(sys.argv[1]), int(sys.argv[2]); "
         "r = run_ours(load_ours('float32', 'unrolled'), B, text_prompts(B, 64), 128, repeats); "
         "print(json.dumps(r['ms_step']))")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", action="append", help="an XLA_FLAGS string (repeatable; '' = none)")
    args = ap.parse_args()
    variants = args.variant if args.variant is not None else ["", "--xla_cpu_prefer_vector_width=512"]
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            env = dict(os.environ, XLA_FLAGS=v, INFER_NO_XLA_FLAGS="1")
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.batch), str(args.repeats)], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"variant {v!r} failed:\n{out.stderr[-2000:]}")
            times[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {v or '(no flags)'}: {times[v][-1]:.2f} ms/step", flush=True)
    base = statistics.median(times[variants[0]])
    print(f"\nbatch {args.batch}, median of {args.rounds} rounds (each the median of {args.repeats} runs)")
    print("| XLA_FLAGS | ms/step | vs the first |\n|---|---|---|")
    for v in variants:
        m = statistics.median(times[v])
        print(f"| {v or '(none)'} | {m:.2f} | {base / m:.2f}× |")


if __name__ == "__main__":
    main()
