"""``tllib-jtln test --log DIR``: the best checkpoint of a finished run on its validation and test splits.

The run is assembled as training assembles it (:func:`~tllib_jtln.engine.assembly.assemble`: the
same task, method and model, ``method.prepare_model`` included), then ``checkpoints/best.pt`` is
loaded and the target head evaluated (top-1 and mean per-class accuracy).
"""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..errors import UserError
from . import distributed as D
from .assembly import assemble, eval_loader_of
from .checkpoint import load_checkpoint
from .evaluate import EvalResult, evaluate
from .logdir import best_checkpoint


def evaluate_run(cfg: Config) -> dict:
    """Evaluate ``LOG/checkpoints/best.pt`` on the target test split (and validation split)."""
    info = D.env_info()
    device = D.resolve_device(cfg.device, info)
    D.init(info, device)
    try:
        log_dir = Path(cfg.log)
        ckpt_path = best_checkpoint(log_dir)
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        parts = assemble(cfg, device, info, log_dir)
        try:
            parts.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{ckpt_path} does not fit the model of {log_dir}/config.yaml ({first[:160]})") from None
        amp = bool(cfg.amp and device.type == "cuda")
        out: dict = {"best_epoch": ckpt.get("epoch")}
        results: dict[str, EvalResult] = {}
        for split, dataset in (("val", parts.task.target_val), ("test", parts.task.target_test)):
            if dataset is not None and len(dataset):
                results[split] = evaluate(parts.model, eval_loader_of(parts, dataset), device,
                                          len(parts.task.target_classes), amp=amp, cpu_bf16=cfg.cpu_bf16)
                out.update(results[split].as_dict(split))
        if info.is_main:
            text = ", ".join(f"{s} top-1 {100 * r.top1:.2f}% (mean class {100 * r.mean_class_acc:.2f}%)"
                             for s, r in results.items())
            print(f"{ckpt_path} (epoch {ckpt.get('epoch')}): {text}", flush=True)
        D.barrier()  # tear the process group down together (see train)
        return out
    finally:
        D.cleanup()
