"""Reading a tensor in row chunks without keeping a memory-mapped file resident.

Pages of a file mapping that a process has read count in its resident set until it unmaps the
file: a cost built from a 1.28M x 512 fp16 store (1.3 GB) would hold all of it by the end of one
pass. :func:`row_chunks` hands out ``rows``-row slices and, when the tensor lies in a file
mapping (``/proc/self/maps`` names a file for its address), asks the kernel to reclaim each
slice's pages once the next is asked for (``madvise(MADV_PAGEOUT)``, Linux 5.4+): the file stays
in the page cache, the process's resident set stays about one chunk. :func:`gather_rows` does
the same for scattered rows (a per-class sample, search candidates). Anonymous memory (an
ordinary tensor) is never advised, and where ``madvise`` is missing nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from typing import Iterator, Optional

import torch
from torch import Tensor

MADV_NORMAL, MADV_RANDOM, MADV_PAGEOUT = 0, 1, 21
_LIBC: Optional[ctypes.CDLL] = None


def chunk_rows(dim: int) -> int:
    """Rows per chunk of a ``(N, dim)`` pass: ``2**24`` elements (64 MB as float32, 32768 rows at 512-d,
    8192 at 2048-d), at least 1024."""
    return max(1024, (1 << 24) // max(1, dim))


def _libc() -> Optional[ctypes.CDLL]:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
    return _LIBC


def is_file_mapping(x: Tensor) -> bool:
    """True when ``x``'s memory lies in a mapping of a file (``/proc/self/maps``; False elsewhere)."""
    if x.device.type != "cpu" or x.numel() == 0:
        return False
    address = x.data_ptr()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(v, 16) for v in fields[0].split("-"))
                if low <= address < high:
                    return fields[4] != "0" and len(fields) == 6 and not fields[5].startswith("[")
    except OSError:
        return False
    return False


def advise(x: Tensor, start: int, stop: int, advice: int) -> None:
    """``madvise(advice)`` on the whole pages holding rows ``[start, stop)`` of contiguous ``x``."""
    libc = _libc()
    if libc is None:
        return
    row_bytes = x.stride(0) * x.element_size()
    page = mmap.PAGESIZE
    low = -(-(x.data_ptr() + start * row_bytes) // page) * page
    high = (x.data_ptr() + stop * row_bytes) // page * page
    if high > low:
        libc.madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), advice)


def page_out(x: Tensor, start: int, stop: int) -> None:
    """Advise the kernel to reclaim the pages holding rows ``[start, stop)`` of contiguous ``x``."""
    advise(x, start, stop, MADV_PAGEOUT)


def row_chunks(x: Tensor, rows: int) -> Iterator[tuple[int, Tensor]]:
    """``(start, x[start:start + rows])`` over ``x``; a file mapping's pages are reclaimed behind the reader."""
    release = x.is_contiguous() and is_file_mapping(x)
    for start in range(0, x.shape[0], rows):
        stop = min(x.shape[0], start + rows)
        yield start, x[start:stop]
        if release:
            page_out(x, start, stop)


def gather_rows(x: Tensor, index: Tensor, block: int = 1 << 14) -> Tensor:
    """``x[index]`` (a copy). From a file mapping, ``block`` rows at a time with read-ahead off
    (``MADV_RANDOM``: a scattered row maps its own page, not its neighbours'), each block's pages
    reclaimed after it: the resident set grows by about ``block`` pages, not by the file."""
    if not (x.is_contiguous() and is_file_mapping(x)):
        return x[index]
    advise(x, 0, x.shape[0], MADV_RANDOM)
    try:
        blocks = []
        for start in range(0, index.shape[0], block):
            blocks.append(x[index[start:start + block]])
            page_out(x, 0, x.shape[0])
    finally:
        advise(x, 0, x.shape[0], MADV_NORMAL)
    return torch.cat(blocks) if blocks else x[index]
