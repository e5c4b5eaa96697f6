"""``tllib-jtln train --nproc-per-node N ...``: start N DDP workers through PyTorch's own launcher.

The workers are started by ``torch.distributed.run`` (torchrun's code) exactly as::

    torchrun --standalone --nproc-per-node N -m tllib_jtln -- <the same arguments>

so the command a user types is the single-process one plus one flag (torchrun's own options never
see ``--log``). Each worker finds ``LOCAL_RANK`` in its environment and trains as one rank; the
``--nproc-per-node`` it still carries is then a no-op.
"""
from __future__ import annotations

import sys

from ..errors import UserError


def launcher_args(nproc: int, argv: list[str]) -> list[str]:
    """torchrun's argument list for ``nproc`` workers running ``python -m tllib_jtln <argv>``."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "tllib_jtln", "--", *argv]


def launch_workers(nproc: int, argv: list[str]) -> int:
    """Run the workers and wait; 0 when every worker succeeded, 1 otherwise (their errors are printed)."""
    if nproc < 1:
        raise UserError(f"--nproc-per-node must be >= 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(launcher_args(nproc, argv)))
    except ChildFailedError as exc:
        failures = getattr(exc, "failures", {}) or {}
        codes = sorted({getattr(f, "exitcode", 1) for f in failures.values()}) or [1]
        sys.stderr.write(f"tllib-jtln: {len(failures) or 'some'} of {nproc} worker(s) failed "
                         f"(exit {', '.join(map(str, codes))}); see their messages above\n")
        return 2 if codes == [2] else 1
    return 0
