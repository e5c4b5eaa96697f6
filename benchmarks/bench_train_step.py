"""One training step of every method on the same backbone and batch, and feature throughput.

Setting (issue 8): resnet18 from scratch at 32 px, 3 channels, a source batch of 64 and a target
batch of 64, CPU, SGD step included. The OT term's overhead is where it is relatively largest:
a small network and few classes (Ks = Kt = 5), so ``jtln / joint`` is the ratio that matters;
goal <= 1.10. ``co_tuning`` is timed in its co-tuning stage (its last stage).

    python -m pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-group-by=group
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from tllib_jtln.config import Config
from tllib_jtln.cost import build_cost, collect_features
from tllib_jtln.data import JointBatch, TransferTask
from tllib_jtln.engine.step import descend, loss_terms
from tllib_jtln.methods import METHODS, SetupContext, build_method
from tllib_jtln.models import build_model

KS = KT = 5
BATCH = 64
SIZE = 32


def _task(n: int = 256) -> TransferTask:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, SIZE, SIZE, generator=gen)
    labels = torch.arange(n) % KS
    data = TensorDataset(images, labels)
    return TransferTask(name="bench", target_train=data, target_val=data, target_test=data,
                        target_classes=[f"t{i}" for i in range(KT)], source_train=data,
                        source_classes=[f"s{i}" for i in range(KS)], in_chans=3, image_size=SIZE)


def _step_fn(method_name: str, batch_size: int = BATCH):
    """A closure running one optimisation step of ``method_name`` on fixed batches.

    Under ``--benchmark-disable`` (CI's smoke run) the callers pass a smaller batch."""
    torch.manual_seed(0)
    quick_setup = ({"delta_attention_iters": 1, "delta_attention_epochs": 1, "delta_attention_batch_size": 2}
                   if method_name == "delta" else {})  # the channel attention: setup, not timed
    cfg = Config(method=method_name, arch="resnet18", pretrained=False, finetune=False, image_size=SIZE, **quick_setup)
    task = _task(4 * batch_size)
    method = build_method(cfg, task)
    model = build_model(cfg, task)
    method.prepare_model(model)

    def features(split):
        dataset = task.source_train if split == "source" else task.target_train
        loader = torch.utils.data.DataLoader(dataset, batch_size=128)
        return collect_features(model.forward_features, loader, progress=False)

    ctx = SetupContext(model=model, device=torch.device("cpu"), feature_fn=features,
                       source_classes=task.source_classes, target_classes=task.target_classes,
                       dataset_fn=lambda split: task.source_train if split == "source" else task.target_train)
    method.setup(ctx)
    method.on_stage_start(len(method.stages()) - 1, ctx)  # the last stage: past any source stage
    method.on_epoch_start(cfg.epochs - 1, ctx)
    optimizer = torch.optim.SGD(method.param_groups(model, cfg.lr), lr=cfg.lr, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(1)
    b = batch_size
    batch = JointBatch(torch.randn(b, 3, SIZE, SIZE, generator=gen), torch.randint(0, KS, (b,), generator=gen),
                       torch.randn(b, 3, SIZE, SIZE, generator=gen), torch.randint(0, KT, (b,), generator=gen))
    if not method.uses_source:
        batch = JointBatch(None, None, batch.x_t, batch.y_t)
    progress = 0.75
    model.train()

    def step():
        terms, loss = loss_terms(method, model, batch, progress)
        descend(loss, optimizer)
        return terms

    return step


#: the methods this recipe (resnet18 from scratch) can run: lwf distils a pretrained classifier, which it has not
STEP_METHODS = [name for name in METHODS.names() if name != "lwf"]


@pytest.mark.parametrize("method_name", STEP_METHODS)
def test_train_step(benchmark, method_name):
    benchmark.group = "train step: resnet18, 32 px, 64 source + 64 target, CPU"
    step = _step_fn(method_name, 8 if benchmark.disabled else BATCH)
    step()  # warm-up: allocator, one-time kernels
    terms = benchmark.pedantic(step, rounds=5 if not benchmark.disabled else 1, iterations=1)
    assert all(torch.isfinite(t) for t in terms.values())
    if method_name == "jtln":
        assert "ot" in terms


def test_jtln_over_joint_step_ratio(benchmark):
    """JTLN step time / joint step time on identical batches (median of interleaved repeats)."""
    import time

    benchmark.group = "train step: resnet18, 32 px, 64 source + 64 target, CPU"
    size = 8 if benchmark.disabled else BATCH
    joint, jtln = _step_fn("joint", size), _step_fn("jtln", size)
    joint(), jtln()
    repeats = 2 if benchmark.disabled else 15
    times = {"joint": [], "jtln": []}
    for _ in range(repeats):  # interleaved, so machine load hits both alike
        for name, fn in (("joint", joint), ("jtln", jtln)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = median["jtln"] / median["joint"]
    benchmark.extra_info.update(jtln_over_joint=ratio, joint_ms=1e3 * median["joint"], jtln_ms=1e3 * median["jtln"])
    benchmark.pedantic(jtln, rounds=1, iterations=1)
    if not benchmark.disabled:
        assert ratio <= 1.10, f"JTLN step is {ratio:.3f}x the joint step (goal <= 1.10)"


def test_feature_extraction_throughput(benchmark):
    """Images/s of collect_features (the cost matrix's input): resnet18, 32 px, batch 256, eval mode."""
    benchmark.group = "feature extraction"
    torch.manual_seed(0)
    cfg = Config(arch="resnet18", pretrained=False, image_size=SIZE)
    model = build_model(cfg, _task(16))
    n = 512 if not benchmark.disabled else 128
    data = TensorDataset(torch.randn(n, 3, SIZE, SIZE), torch.zeros(n, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=256)
    feats, _ = benchmark.pedantic(lambda: collect_features(model.forward_features, loader, progress=False),
                                  rounds=3 if not benchmark.disabled else 1, iterations=1)
    assert feats.shape == (n, model.features_dim)
    if not benchmark.disabled:
        benchmark.extra_info["images_per_s"] = n / benchmark.stats.stats.median


def test_cost_build_from_features(benchmark):
    """The embedded task's knn cost at its real size: 5000 source and 50 target features of 128-d."""
    benchmark.group = "cost build"
    gen = torch.Generator().manual_seed(0)
    sf, tf = torch.randn(5000, 128, generator=gen), torch.randn(50, 128, generator=gen)
    sl, tl = torch.arange(5000) % KS, torch.arange(50) % KT
    cost = benchmark(build_cost, "knn", sf, sl, tf, tl)
    assert cost.shape == (KS, KT) and float(cost.max()) == pytest.approx(1.0)
