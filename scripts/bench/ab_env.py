#!/usr/bin/env python3
"""A/B of one environment setting: `aezoo bench ENTRY --steps N` without and
with `NAME=VALUE`, alternating for PAIRS pairs in one run, then the median
training and inference images/s of each side and their ratio. This is how the
off switches in docs/perf.md's fast-path tables were measured, e.g.

    cargo build --release -p aezoo-cli
    python3 scripts/bench/ab_env.py AEZOO_LINGER=0 ae-sparse --steps 150 --pairs 3
    python3 scripts/bench/ab_env.py CANDLE_NUM_THREADS=2 ae-linear ae-mlp vae-mlp

Alternating matters on a shared VM: single figures swing between minutes,
while the two sides of a pair run seconds apart.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_once(binary, entry, steps, extra_env):
    env = dict(os.environ)
    env.update(extra_env)
    proc = subprocess.run(
        [str(binary), "bench", entry, "--steps", str(steps)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"ab_env: `aezoo bench {entry}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    j = json.loads(line)
    return j["train_img_s"], j["infer_img_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("setting", help="NAME=VALUE set on the B side")
    ap.add_argument("entries", nargs="+", help="zoo entries")
    ap.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs (default 3)")
    ap.add_argument("--binary", default=str(ROOT / "target/release/aezoo"), help="the aezoo binary")
    args = ap.parse_args()
    if "=" not in args.setting:
        sys.exit(f"ab_env: setting `{args.setting}` is not NAME=VALUE")
    name, value = args.setting.split("=", 1)
    if not Path(args.binary).is_file():
        sys.exit(f"ab_env: no binary at {args.binary} (cargo build --release -p aezoo-cli)")
    print(f"| entry | train img/s (plain) | train img/s ({args.setting}) | plain / B | infer img/s (plain) | infer img/s ({args.setting}) | plain / B |")
    print("|---|---|---|---|---|---|---|")
    for entry in args.entries:
        sides = {"a": [], "b": []}
        for _ in range(args.pairs):
            sides["a"].append(run_once(args.binary, entry, args.steps, {}))
            sides["b"].append(run_once(args.binary, entry, args.steps, {name: value}))
        med = {k: (statistics.median(t for t, _ in v), statistics.median(i for _, i in v)) for k, v in sides.items()}
        (ta, ia), (tb, ib) = med["a"], med["b"]
        print(f"| {entry} | {ta:,.0f} | {tb:,.0f} | {ta / tb:.2f} | {ia:,.0f} | {ib:,.0f} | {ia / ib:.2f} |", flush=True)


if __name__ == "__main__":
    main()
