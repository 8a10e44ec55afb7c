#!/usr/bin/env python3
"""Reads an aezoo run's TensorBoard event files with the `tensorboard` package.

usage: python3 scripts/check_tensorboard.py RUN/tensorboard

Prints JSON: {"scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, width, height], ...]}}.
Exit 2 when tensorboard is not installed, so callers can tell that apart.
Used by crates/aezoo-zoo/tests/zoo.rs (tensorboard_reads_our_event_files).
"""
import json
import sys

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    print("tensorboard is not installed (pip install tensorboard)", file=sys.stderr)
    sys.exit(2)

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags.get("scalars", [])},
    "images": {t: [[e.step, e.width, e.height] for e in acc.Images(t)] for t in tags.get("images", [])},
}
print(json.dumps(out))
