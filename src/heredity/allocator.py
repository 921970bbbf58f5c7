"""glibc's allocator, set for training and sampling on a CPU: the ``heredity`` command calls ``lean_malloc``
first thing.

PyTorch on a CPU takes every tensor from ``malloc``. glibc serves a large request by ``mmap`` until one such
block is freed; from then on it raises its threshold (up to 32 MB) and serves tensors of that size from its
heaps, where freed blocks stay in the process. A fine-tune frees and reallocates activations of every size at
every step, so its resident memory grows well past what it holds at any moment, and each of the (8 × cores)
arenas keeps its own. A fixed mmap threshold of 256 KiB returns every large tensor to the system when it is
freed, and two arenas suffice for PyTorch's few threads: a batch-16 LoRA fine-tune of SmolLM2 then peaks lower
at no measured cost in speed (``bench/finetune.py --memory``, "heredity, glibc's default allocator" row).

Settings a user made (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``) are kept; ``HEREDITY_MALLOC=default``
leaves glibc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's malloc.h


def lean_malloc(mmap_threshold: int = 256 * 1024, arenas: int = 2) -> bool:
    """Set glibc's mmap threshold and arena count (see the module); whether they were set. A no-op (False) off
    glibc, under ``HEREDITY_MALLOC=default``, or where the user set either through glibc's environment."""
    if os.environ.get("HEREDITY_MALLOC", "lean") == "default" or not sys.platform.startswith("linux"):
        return False
    if "MALLOC_ARENA_MAX" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, arenas) == 1 and mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
