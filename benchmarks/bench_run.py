"""The engine's training loop against a bare PyTorch loop: steps per second, goal engine/bare <= 1.10.

Engine: the real ``tllib_jtln.engine.trainer.train(cfg)`` on the embedded Fashion-MNIST task
(data loading, device moves, the finite-loss check, running sums, progress lines included);
its speed is read from the per-epoch ``train_time_s`` of ``metrics.jsonl`` (the epoch's training
steps alone, no validation), the first epoch being a warm-up. The run stops after its measured
epochs (``stop_after_epoch``), so no test pass is spent.

Bare: :func:`tllib_jtln.engine.bare.bare_step`, the same model, method losses, optimiser
(``build_optimizer``: SGD Nesterov, the same parameter groups) and batch shapes on pre-made
tensors, in a plain ``for`` loop of ``loss.backward(); optimizer.step()``.

Engine and bare are measured interleaved in one process (engine, bare, engine, bare, ...) so
machine load hits both alike; ``extra_info`` holds the medians and ``engine_over_bare``.
Settings: (a) ``smallcnn`` at 28 px, 32 target + 64 source images, ``joint`` and ``jtln``;
(b) ``tf_efficientnet_lite0`` at 96 px, frozen BatchNorm, 16 + 16 images, ``joint``.

    python -m pytest benchmarks/bench_run.py --benchmark-only
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from tllib_jtln.data.fashion_mnist import locate
from tllib_jtln.engine.bare import bare_step
from tllib_jtln.engine.logdir import MetricsLog
from tllib_jtln.engine.run import resolve_config
from tllib_jtln.engine.trainer import train

SETTINGS = {
    "smallcnn-joint": dict(method="joint"),
    "smallcnn-jtln": dict(method="jtln"),
    "lite0-96px-joint": dict(method="joint", arch="tf_efficientnet_lite0", pretrained=False, image_size=96,
                             freeze_bn=True, batch_size=16, source_batch_size=16),
}

#: ``--benchmark-disable`` (``make test``): smaller batches, so the plumbing runs in seconds.
TINY = {"smallcnn-joint": dict(batch_size=8, source_batch_size=8),
        "smallcnn-jtln": dict(batch_size=8, source_batch_size=8),
        "lite0-96px-joint": dict(image_size=32, batch_size=4, source_batch_size=4)}

needs_data = pytest.mark.skipif(locate(None) is None, reason="Fashion-MNIST is not installed "
                                                             "(tllib-jtln data prepare fashion-mnist)")


def _config(name: str, log: Path, epochs: int, iters: int, tiny: bool):
    """The embedded recipe with the setting's overrides (``TINY`` ones too when ``tiny``); ``epochs + 1``
    so that stopping after ``epochs`` skips the test pass. Source and validation sets are capped:
    they do not enter a step."""
    given = dict(SETTINGS[name], **(TINY[name] if tiny else {}), log=str(log), epochs=epochs + 1,
                 iters_per_epoch=iters, progress=False, source_per_class=200, val_per_class=2, device="cpu",
                 print_freq=10 ** 6)
    return resolve_config(given)


def engine_seconds_per_step(name: str, log: Path, epochs: int, iters: int, tiny: bool = False) -> tuple[float, int]:
    """Seconds per step of ``train(cfg)`` over epochs 2..``epochs`` (from ``train_time_s``), steps run."""
    train(_config(name, log, epochs, iters, tiny), stop_after_epoch=epochs)
    records = MetricsLog(log).read()
    assert len(records) == epochs and records[-1]["step"] == epochs * iters
    measured = records[1:]
    return sum(r["train_time_s"] for r in measured) / (len(measured) * iters), len(measured) * iters


def bare_loop(name: str, log: Path, tiny: bool = False):
    """``run(steps) -> seconds``: :func:`tllib_jtln.engine.bare.bare_step` of the same settings."""
    bare = bare_step(_config(name, log, 1, 1, tiny), log)

    def run(steps: int) -> float:
        start = time.perf_counter()
        bare.run(steps)
        return time.perf_counter() - start

    return run


@needs_data
@pytest.mark.parametrize("name", list(SETTINGS))
def test_engine_over_bare_loop(benchmark, tmp_path, name):
    benchmark.group = "whole loop: engine vs bare PyTorch, CPU"
    tiny = benchmark.disabled  # `make test`: one tiny round, the arithmetic and the plumbing only
    if tiny:
        epochs, iters, repeats = 2, 1, 1
    else:
        epochs, iters, repeats = 3, (6 if name.startswith("lite0") else 20), 3
    bare = bare_loop(name, tmp_path / "bare", tiny)
    bare(1 if tiny else 3)  # warm-up: allocator, one-time kernels
    engine_s, bare_s, steps = [], [], []
    for r in range(repeats):  # interleaved, so machine load hits both alike
        per_step, n = engine_seconds_per_step(name, tmp_path / f"engine{r}", epochs, iters, tiny)
        engine_s.append(per_step)
        steps.append(n)
        bare_s.append(bare(n) / n)
    assert steps == [(epochs - 1) * iters] * repeats  # both sides ran the same number of steps
    engine, plain = statistics.median(engine_s), statistics.median(bare_s)
    benchmark.extra_info.update(engine_over_bare=engine / plain, engine_steps_per_s=1 / engine,
                                bare_steps_per_s=1 / plain, steps_per_measure=steps[0], repeats=repeats)
    benchmark.pedantic(bare, args=(iters,), rounds=1 if tiny else 3, iterations=1)
