#!/usr/bin/env python
"""Step time of one CPU configuration with each speed lever on or off, as a markdown table.

Default: ``tf_efficientnet_lite0`` at 96 px (random init, frozen BatchNorm), 16 source + 16
target images, ``--method joint``, on the embedded Fashion-MNIST task; the step is
:func:`tllib_jtln.engine.bare.bare_step` (forward, losses, backward, SGD step on a fixed batch).
Levers: ``--channels-last``, ``--cpu-bf16``, both, and ``torch.compile`` of the model (its
compile time, spent in the first step, is reported separately). Each lever: ``--warmup`` steps,
then the median of ``--steps`` timed steps; "relative" is that median over the baseline's.

    python scripts/cpu_levers.py [--steps 10] [--warmup 2] [--only baseline,cpu_bf16] [-- extra train flags]

bfloat16 pays off only on CPUs with native bfloat16 instructions (AVX512-BF16, AMX); elsewhere
oneDNN emulates it and a step gets slower.

Timings depend on the machine and on its load: run it on a quiet machine before quoting them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

BASE = dict(method="joint", arch="tf_efficientnet_lite0", pretrained=False, image_size=96, freeze_bn=True,
            batch_size=16, source_batch_size=16, source_per_class=100, val_per_class=2, device="cpu")
LEVERS = [("baseline", {}, False), ("channels_last", {"channels_last": True}, False),
          ("cpu_bf16", {"cpu_bf16": True}, False),
          ("channels_last+cpu_bf16", {"channels_last": True, "cpu_bf16": True}, False),
          ("torch.compile", {}, True)]


def measure(given: dict, compile_model: bool, steps: int, warmup: int) -> tuple[float, float]:
    """(median step seconds after warm-up, seconds of the first step: compile time included)."""
    from tllib_jtln.engine.bare import bare_step
    from tllib_jtln.engine.run import resolve_config

    with tempfile.TemporaryDirectory() as log:
        bare = bare_step(resolve_config(dict(given, log=log)), log, compile_model=compile_model)
        start = time.perf_counter()
        bare.step(0.0)
        first = time.perf_counter() - start
        for _ in range(max(warmup - 1, 0)):
            bare.step(0.0)
        times = []
        for i in range(steps):
            start = time.perf_counter()
            bare.step(i / steps)
            times.append(time.perf_counter() - start)
    return statistics.median(times), first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", default=None,
                        help="comma-separated levers to time (default: all): " + ",".join(n for n, _, _ in LEVERS))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args, extra = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(BASE)
    if extra:  # train flags override the default configuration
        from tllib_jtln.cli import build_parser
        from tllib_jtln.config import Config

        parsed = vars(build_parser().parse_args(["train", *[a for a in extra if a != "--"]]))
        given.update({k: v for k, v in parsed.items() if k in Config.field_names()})
    print(f"{given['arch']} at {given['image_size']} px, {given['source_batch_size']} + {given['batch_size']} "
          f"images, {given['method']}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| lever | median step (ms) | relative | first step (ms) |")
    print("|---|---:|---:|---:|")
    baseline = None
    known = {n for n, _, _ in LEVERS}
    unknown = set(args.only.split(",")) - known if args.only else set()
    if unknown:
        parser.error(f"--only: unknown lever(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}")
    for name, overrides, compile_model in LEVERS:
        if args.only and name not in args.only.split(","):
            continue
        try:
            median, first = measure(dict(given, **overrides), compile_model, args.steps, args.warmup)
        except Exception as exc:  # noqa: BLE001 - report a lever that fails (torch.compile) and go on
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | |", flush=True)
            continue
        baseline = baseline or median
        print(f"| {name} | {1e3 * median:.1f} | {median / baseline:.2f} | {1e3 * first:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
