"""``--phase analysis``: what TLlib's scripts do for a trained run, on the run's best checkpoint.

Features ``f = model.forward_features(x)`` (pooled pre-logits, ``(N, D)``) of at most
``MAX_POINTS // 2`` seeded images of each domain (source training images, target test images;
without source images: target training vs target test images), embedded in 2-D with
scikit-learn's ``TSNE`` and drawn as ``LOG/tsne.png``: colour = class within its domain, marker =
domain. The A-distance ``A = 2 (1 - 2 err)``, with ``err`` the test error of a logistic regression
telling the two domains' features apart (half the points train it, half test it), is written with
the point counts to ``LOG/analysis.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import UserError
from . import distributed as D
from ..fileio import save_figure, write_json
from .checkpoint import load_checkpoint
from .logdir import best_checkpoint

MAX_POINTS = 1000


def _sample(dataset, cap: int, seed: int, transform):
    n = len(dataset)
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:cap]) if n > cap else np.arange(n)
    return dataset.subset(keep, transform) if hasattr(dataset, "subset") else dataset


def a_distance(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """``2 (1 - 2 err)`` of a logistic regression separating features ``a (Na, D)`` from ``b (Nb, D)``."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    fit, held = order[:half], order[half:]
    if len(np.unique(y[fit])) < 2:
        return float("nan")
    clf = LogisticRegression(max_iter=1000).fit(x[fit], y[fit])
    err = float(np.mean(clf.predict(x[held]) != y[held]))
    return 2.0 * (1.0 - 2.0 * err)


def plot_tsne(points: np.ndarray, labels: np.ndarray, domains: np.ndarray, names: list[str], path: Path) -> None:
    """Scatter ``points (N, 2)``: colour by ``labels``, marker by ``domains`` (index into ``names``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7))
    cmap = plt.get_cmap("tab20")
    for d, (name, marker) in enumerate(zip(names, ("o", "^", "s"))):
        rows = domains == d
        ax.scatter(points[rows, 0], points[rows, 1], c=[cmap(int(c) % 20) for c in labels[rows]], marker=marker,
                   s=14, alpha=0.7, label=name, edgecolors="none")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best")
    ax.set_title("t-SNE of the best checkpoint's features (colour: class, marker: domain)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def analyse_run(cfg: Config) -> dict:
    """Write ``tsne.png`` and ``analysis.json`` into ``cfg.log`` for its best checkpoint; returns the numbers."""
    from sklearn.manifold import TSNE

    from ..cost import collect_features
    from ..data import eval_loader
    from .assembly import assemble

    info = D.env_info()
    if info.enabled:
        raise UserError("--phase analysis runs in one process; drop --nproc-per-node / torchrun")
    device = D.resolve_device(cfg.device, info)
    log_dir = Path(cfg.log)
    ckpt = load_checkpoint(best_checkpoint(log_dir), map_location="cpu")
    parts = assemble(cfg, device, info, log_dir)
    task, model = parts.task, parts.model
    model.load_state_dict(ckpt["model"])
    model.eval()

    if task.source_train is not None:
        domains = [("source", task.source_train), ("target", task.target_test)]
    else:
        domains = [("target train", task.target_train), ("target test", task.target_test)]
    feats, labels, marks = [], [], []
    for d, (name, dataset) in enumerate(domains):
        subset = _sample(dataset, MAX_POINTS // 2, cfg.seed + d, task.eval_transform)
        f, y = collect_features(model.forward_features, eval_loader(subset, 64, cfg.workers), progress=False)
        feats.append(f.numpy())
        labels.append(y.numpy())
        marks.append(np.full(len(y), d))
    x = np.concatenate(feats)
    if len(x) < 5:
        raise UserError(f"--phase analysis: only {len(x)} images to embed; t-SNE needs at least 5")
    points = TSNE(n_components=2, init="pca", perplexity=float(min(30, len(x) - 1)),
                  random_state=cfg.seed).fit_transform(x)
    plot_tsne(points, np.concatenate(labels), np.concatenate(marks), [n for n, _ in domains], log_dir / "tsne.png")
    result = {"domains": [n for n, _ in domains], "points": [len(f) for f in feats],
              "a_distance": a_distance(feats[0], feats[1], cfg.seed), "best_epoch": ckpt.get("epoch")}
    write_json(result, log_dir / "analysis.json")
    print(f"{log_dir / 'tsne.png'}: t-SNE of {len(x)} images ({', '.join(n for n, _ in domains)}); "
          f"A-distance {result['a_distance']:.3f}", flush=True)
    return result
