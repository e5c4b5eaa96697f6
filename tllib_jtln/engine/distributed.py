"""``torchrun`` / DDP helpers: process-group setup, the device of each rank, reductions.

``torchrun --nproc_per_node=N -m tllib_jtln train ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; with ``WORLD_SIZE > 1`` the engine joins a process group (``nccl`` on CUDA,
``gloo`` on CPU), wraps the model in DDP and shards the data. Only rank 0 writes files and
draws progress bars. Without those variables every helper here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from the ``torchrun`` environment variables."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("WORLD_SIZE/RANK/LOCAL_RANK must be integers (launch with torchrun)") from None
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Under DDP on CUDA each rank takes ``cuda:LOCAL_RANK``. Asking for CUDA where there is none
    (or for a device index beyond the visible ones) is a UserError naming ``--device cpu``/``auto``:
    a run never falls back to the CPU silently.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if name == "cuda":
            index = info.local_rank if info.enabled else torch.cuda.current_device()
        else:
            try:
                index = int(name.split(":", 1)[1])
            except (IndexError, ValueError):
                raise UserError(f"--device {name}: expected cuda:N with an integer N") from None
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UserError(f"--device {name}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1}); "
                            f"use one of them, --device cpu or auto")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N")


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (``nccl`` for CUDA devices, ``gloo`` otherwise) when distributed."""
    if not info.enabled or dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise UserError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set; launch with "
                        "`torchrun --nproc_per_node=N -m tllib_jtln train ...`")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "rank": info.rank, "world_size": info.world_size}
    if device.type == "cuda":
        kwargs["device_id"] = device
    # Imported before the group exists: its functions' `group=group.WORLD` defaults are bound when it is
    # first imported, which DistributedDataParallel's first construction does; bound then, they hold the
    # group past destroy_process_group, and its threads (gloo's event loop and workers) live on into the
    # interpreter's shutdown, where a rank could abort ("terminate called without an active exception").
    import torch.distributed.nn.functional  # noqa: F401

    dist.init_process_group(**kwargs)


def cleanup() -> None:
    """Destroy the process group (every exit path of a run calls it): with no other reference left
    (see :func:`init`), its C++ backend and threads end here, before the interpreter's shutdown."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it); identity when not distributed."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``broadcast_object_list``); identity when not distributed.

    Tensors inside ``obj`` are moved to the CPU first so that the object pickles the same way
    under ``gloo`` and ``nccl``.
    """
    if not active():
        return obj
    holder = [to_device(obj, "cpu") if dist.get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (used to stop all ranks together)."""
    if not active():
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) == 0


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor inside it (dicts, lists, tuples) detached and moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
