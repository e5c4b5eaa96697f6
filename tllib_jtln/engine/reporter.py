"""What a run tells its user: the lines it prints and the ``metrics.jsonl`` it writes, in one place.

Only the main process (rank 0 under DDP) prints and writes. During an epoch a progress bar
(tqdm under ``--progress`` on a terminal, else TLlib-style lines every ``--print-freq`` steps) shows the loss
terms; after it, one line per epoch (loss terms, validation accuracies, learning rate) and one
``metrics.jsonl`` record. Warnings (a method's :meth:`Method.epoch_warnings
<tllib_jtln.methods.Method.epoch_warnings>`, the engine's :mod:`health` check) go to stderr, once
per kind and run.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from .logdir import MetricsLog, loss_keys

#: the ``ot`` term's two parts (``methods.JTLN.step_stats``), shown after the loss terms
OT_PARTS = ("ot_transport", "ot_reg_term")


def _val_text(record: dict, mean_class: bool = True) -> str:
    """``val top-1 X% (, mean class Y%)``, or ``val: none`` without validation (``--val-split none``:
    NaN accuracies, the last epoch is kept)."""
    top1 = record["val_top1"]
    if top1 is None or math.isnan(top1):
        return "val: none"
    text = f"val top-1 {100 * top1:.2f}%"
    return text + (f", mean class {100 * record['val_mean_class_acc']:.2f}%" if mean_class else "")


def bars_wanted(enabled: bool, is_main: bool) -> bool:
    """Whether to draw tqdm bars: asked for (``--progress``), on the main process, and stderr (where
    tqdm draws) is a terminal, as tqdm users expect (a log file gets lines, not carriage returns)."""
    return enabled and is_main and sys.stderr.isatty()


class ProgressBar:
    """tqdm when :func:`bars_wanted`, TLlib-style lines every ``print_freq`` otherwise."""

    def __init__(self, enabled: bool, is_main: bool, total: int, desc: str, print_freq: int):
        self.is_main, self.desc, self.print_freq, self.total = is_main, desc, print_freq, total
        self.bar = None
        if bars_wanted(enabled, is_main):
            from tqdm.auto import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: no daemon thread alive at interpreter exit
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, i: int, terms: dict[str, float]) -> None:
        text = {k: f"{v:.4f}" for k, v in terms.items()}
        if self.bar is not None:
            self.bar.update(1)
            if i % max(1, min(10, self.print_freq)) == 0 or i == self.total:
                self.bar.set_postfix(text, refresh=False)
        elif self.is_main and (i % self.print_freq == 0 or i == self.total):
            print(f"{self.desc} [{i:>{len(str(self.total))}}/{self.total}] "
                  + " ".join(f"{k} {v}" for k, v in text.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Reporter:
    """Prints (main process only) and keeps ``metrics.jsonl`` of the run in ``log_dir``."""

    def __init__(self, cfg, log_dir: Path, is_main: bool, total_epochs: int):
        self.cfg, self.is_main, self.total_epochs = cfg, is_main, total_epochs
        self.metrics = MetricsLog(log_dir)
        self.warned: set[str] = set()

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def progress_bar(self, epoch: int, stage_name: str) -> ProgressBar:
        """The bar of 0-based ``epoch`` (the stage is named when it is not the method itself)."""
        cfg = self.cfg
        desc = f"epoch {epoch + 1}/{self.total_epochs}" + (f" ({stage_name})" if stage_name != cfg.method else "")
        return ProgressBar(cfg.progress, self.is_main, cfg.iters_per_epoch, desc, cfg.print_freq)

    def training_starts(self, task, stages: list, device, info) -> None:
        cfg = self.cfg
        self.say(f"training '{cfg.method}' on {task.name}: {len(task.target_classes)} target classes, "
                 + (f"stages {' -> '.join(s.name for s in stages)}, each " if len(stages) > 1 else "")
                 + f"{cfg.epochs} epochs x {cfg.iters_per_epoch} iterations, device {device}"
                 + (f", {info.world_size} processes" if info.enabled else ""))

    def resumed(self, log_dir: Path, epoch: int) -> None:
        """Drop what a killed run wrote after ``epoch`` and say where the run continues."""
        if self.is_main:
            self.metrics.truncate_after(epoch)
        left = ("every epoch is done; running the test pass" if epoch >= self.total_epochs
                else f"continuing with epoch {epoch + 1}")
        self.say(f"resumed {log_dir} after epoch {epoch}: {left}")

    def warn_once(self, kind: str, lines: list[str]) -> None:
        """Print ``lines`` to stderr, the first time a warning of ``kind`` has any in this run."""
        if self.is_main and lines and kind not in self.warned:
            self.warned.add(kind)
            for line in lines:
                print(f"warning: {line}", file=sys.stderr, flush=True)

    def record(self, record: dict) -> None:
        """The epoch's ``metrics.jsonl`` line."""
        if self.is_main:
            self.metrics.append(record)

    def epoch_line(self, record: dict, improved: bool) -> None:
        """``epoch E/N: loss L (terms), val top-1 ..., lr ... [*best*] [seconds]``."""
        if not self.is_main:
            return
        terms_text = ", ".join(f"{k.removeprefix('train_')} {record[k]:.4f}" for k in loss_keys(record)
                               if k != "train_loss")
        terms_text += "".join(f", {k} {record[k]:.4f}" for k in OT_PARTS if k in record)
        val = (f", {_val_text(record)}" if "val_top1" in record else f" (stage '{record['stage']}', not validated)")
        print(f"epoch {record['epoch']}/{self.total_epochs}: loss {record.get('train_loss', float('nan')):.4f}"
              f"{' (' + terms_text + ')' if terms_text else ''}{val}, lr {record['lr']:.4g}"
              f"{' *best*' if improved else ''} [{record['epoch_time_s']:.1f}s]", flush=True)

    def finished(self, summary: dict, best: dict, wall: float, log_dir: Path) -> None:
        """The closing lines: the best epoch, its test accuracies and where the log is."""
        test = ("test skipped (--skip-test)" if summary.get("test_skipped") else
                f"test top-1 {100 * summary['test_top1']:.2f}%, mean class "
                f"{100 * summary['test_mean_class_acc']:.2f}% ({summary['test_images']} images)")
        self.say(f"best epoch {best['epoch']}: {_val_text(best, mean_class=False)}; {test}; "
                 f"{wall:.1f}s; log: {log_dir}")
        if summary["skipped_images"]:
            self.say(f"skipped {summary['skipped_images']} bad images (--skip-bad-images); each is named above")
