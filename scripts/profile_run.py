#!/usr/bin/env python
"""Where one ``tllib-jtln train`` run's time goes: a run split by phase and a step split by part.

Runs ``tllib_jtln.engine.trainer.train(cfg)`` once under cProfile and sums the cumulative times of
named functions (a phase whose functions are not found prints ``n/a``):

- run: task and model build, method setup (the cost matrix's feature pass), training steps (the
  ``train_time_s`` of ``metrics.jsonl``), validation (every call of ``evaluate`` in
  :mod:`tllib_jtln.engine.epoch`, timed by a wrapper), the final test pass with the transport
  view, plots and ``summary.json``, checkpoints; "other" is the rest of the wall time (imports, log
  folder). The test pass (the first ``evaluate`` of :mod:`tllib_jtln.engine.finish`) is also
  printed in images per second.
- step, averaged over the steps: data (``JointLoader.__next__`` and the device move),
  forward+backward (the method's ``losses`` and ``Tensor.backward``, OT taken out), OT (the
  Wasserstein term's forward and backward), optimiser (``zero_grad`` and ``SGD.step``), logging
  (progress lines / bars); "loop overhead" is the rest of ``train_time_s``.

cProfile's per-call overhead inflates Python-heavy parts (the Sinkhorn loop, logging): read the
shares, not the absolute milliseconds, and time speed claims with ``benchmarks/`` instead.

    python scripts/profile_run.py [train flags]      # default: the embedded task, 2 epochs x 50 steps
    python scripts/profile_run.py --method jtln -a tf_efficientnet_lite0 --image-size 96 --freeze-bn
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

#: (phase, [(path fragment, function name), ...]); cumulative times of the matches are summed.
RUN_PHASES = [
    ("task and model build", [("tllib_jtln/engine/assembly.py", "build_run_task"),
                              ("tllib_jtln/models/classifier.py", "build_model")]),
    ("method setup and cost features", [("tllib_jtln/methods/", "setup"),
                                        ("tllib_jtln/methods/", "on_epoch_start")]),
    ("checkpoints", [("tllib_jtln/engine/checkpoint.py", "save_checkpoint")]),
    ("test pass, plots, summary", [("tllib_jtln/engine/finish.py", "finish")]),
]
STEP_PARTS = [
    ("data (next batch, to device)", [("tllib_jtln/data/joint.py", "__next__"),
                                      ("tllib_jtln/engine/step.py", "batch_to_device")]),
    ("forward+backward (OT excluded)", [("tllib_jtln/methods/", "losses"), ("torch/_tensor.py", "backward")]),
    ("OT (forward + backward)", [("tllib_jtln/ot/loss.py", "forward"), ("tllib_jtln/ot/solver.py", "backward")]),
    ("optimiser (zero_grad, step)", [("torch/optim/sgd.py", "step"), ("torch/optim/optimizer.py", "zero_grad")]),
    ("logging (progress)", [("tllib_jtln/engine/reporter.py", "update")]),
]


def cumulative(stats: pstats.Stats, patterns: list[tuple[str, str]]):
    """Summed cumulative seconds of the functions matching ``patterns`` (None: none found)."""
    total, found = 0.0, False
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(fragment in path.replace("\\", "/") and name == fn for fragment, fn in patterns):
            found, total = True, total + ct
    return total if found else None


def timed(calls: list[tuple[float, int]], fn):
    """``fn`` (an ``evaluate``) wrapped so that each call appends ``(seconds, images evaluated)`` to ``calls``."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        calls.append((time.perf_counter() - start, int(getattr(result, "count", 0) or 0)))
        return result
    return wrapper


def table(title: str, rows: list[tuple[str, float | None]], whole: float, unit: float = 1.0) -> str:
    lines = [f"| {title} | ms | share |", "|---|---:|---:|"]
    for name, seconds in rows:
        if seconds is None:
            lines.append(f"| {name} | n/a | |")
        else:
            lines.append(f"| {name} | {1e3 * seconds / unit:.1f} | {100 * seconds / whole:.0f}% |")
    lines.append(f"| **total** | {1e3 * whole / unit:.1f} | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tllib_jtln.cli import build_parser
    from tllib_jtln.config import Config
    from tllib_jtln.engine.logdir import MetricsLog
    from tllib_jtln.engine.run import resolve_config
    from tllib_jtln.engine import epoch, finish, trainer

    args = vars(build_parser().parse_args(["train", *(sys.argv[1:] if argv is None else argv)]))
    flags = {k: v for k, v in args.items() if k in Config.field_names()}
    with tempfile.TemporaryDirectory() as tmp:
        given = {"log": str(Path(tmp) / "run"), "progress": False, "epochs": 2, "iters_per_epoch": 50, **flags}
        cfg = resolve_config(given)
        validations: list[tuple[float, int]] = []
        tests: list[tuple[float, int]] = []
        epoch.evaluate = timed(validations, epoch.evaluate)  # the validation passes
        finish.evaluate = timed(tests, finish.evaluate)  # the test pass, then the transport view's pass
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        trainer.train(cfg)
        profiler.disable()
        wall = time.perf_counter() - start
        records = MetricsLog(Path(cfg.log)).read()
    stats = pstats.Stats(profiler)
    training = sum(r.get("train_time_s", float("nan")) for r in records)
    steps = records[-1]["step"] if records else 0
    validation = sum(seconds for seconds, _ in validations) if validations else None
    test_seconds, test_images = tests[0] if tests else (float("nan"), 0)

    run_rows = [(RUN_PHASES[0][0], cumulative(stats, RUN_PHASES[0][1])),
                (RUN_PHASES[1][0], cumulative(stats, RUN_PHASES[1][1])),
                ("training steps", training), ("validation", validation)]
    run_rows += [(name, cumulative(stats, patterns)) for name, patterns in RUN_PHASES[2:]]
    run_rows.append(("other (imports, log folder, ...)", wall - sum(s for _, s in run_rows if s is not None)))

    parts = {name: cumulative(stats, patterns) for name, patterns in STEP_PARTS}
    ot = parts["OT (forward + backward)"]
    fb = parts["forward+backward (OT excluded)"]
    if fb is not None and ot is not None:
        parts["forward+backward (OT excluded)"] = fb - ot
    step_rows = list(parts.items())
    step_rows.append(("loop overhead (the rest)", training - sum(s for _, s in step_rows if s is not None)))

    source = "no source images" if str(cfg.source_data).lower() == "none" else f"{cfg.source_batch_size or cfg.batch_size} source"
    print(f"\n{cfg.method}, -a {cfg.arch}, {cfg.image_size} px, {source} + {cfg.batch_size} target images per step, "
          f"{cfg.epochs} epochs x {cfg.iters_per_epoch} steps, under cProfile\n")
    print(table("run phase", run_rows, wall))
    print(f"\ntest pass: {test_images} images in {test_seconds:.2f} s = {test_images / test_seconds:.0f} images/s "
          f"(under cProfile); validation: {(validation or 0) / max(cfg.epochs, 1):.2f} s per epoch against "
          f"{training / max(cfg.epochs, 1):.2f} s of training steps per epoch")
    print()
    print(table(f"one step (mean of {steps})", step_rows, training, unit=max(steps, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
