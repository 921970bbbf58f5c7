"""The process's memory allocator. The ``heredity`` command runs under mimalloc by default (the
``cmeel-mimalloc`` wheel, a dependency on Linux): ``entry`` starts the command again with the library in
``LD_PRELOAD`` before anything is imported, then takes it out of the environment again, so the programs the
command starts (PostgreSQL, Chromium, a compiler) keep their own allocator.

Why: PyTorch on a CPU takes every tensor from ``malloc``. glibc serves a large request by ``mmap`` until one
such block is freed; from then on it raises its threshold (up to 32 MB) and serves tensors of that size from
its heaps, where freed blocks stay in the process. A fine-tune frees and reallocates activations of every
size at every step, so its resident memory grows past what it holds at any moment. mimalloc returns freed
pages to the system a few milliseconds later and reuses them meanwhile. Measured (session 25, 2-core AMD
EPYC, LoRA r=8 on SmolLM2-135M, 64 rows, batch 16, pieces of 384 tokens, three runs each, interleaved):
peak resident 1.81 GB under mimalloc against 2.45 GB under glibc, at the same speed within this machine's
noise; ``bench/finetune.py --memory`` has the table.

``HEREDITY_MALLOC`` chooses: ``mimalloc`` (the default; glibc where the library is not installed or off
Linux), ``glibc`` (as the system has it), or ``lean`` (glibc with a fixed 256 KiB mmap threshold and two
arenas: less memory than glibc's default at 0.68× its speed, measured in session 21; settings a user made
through glibc's environment, ``MALLOC_ARENA_MAX`` and ``MALLOC_MMAP_THRESHOLD_``, are kept).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import sysconfig

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's malloc.h
CHOICES = ("mimalloc", "glibc", "lean")
_OUTER = "HEREDITY_MALLOC_OUTER_PRELOAD"  # set across the restart: the LD_PRELOAD the user had ("" for none)


def choice() -> str:
    """``HEREDITY_MALLOC``, checked: one of ``CHOICES`` (unset or empty: ``mimalloc``)."""
    value = os.environ.get("HEREDITY_MALLOC", "") or "mimalloc"
    if value not in CHOICES:
        raise ValueError(f"HEREDITY_MALLOC={value!r} is not an allocator; use one of {', '.join(CHOICES)}")
    return value


def mimalloc_path() -> str | None:
    """The mimalloc shared library the ``cmeel-mimalloc`` wheel installed beside this environment's packages,
    or None (not installed, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    for key in ("purelib", "platlib"):
        found = sorted(
            glob.glob(os.path.join(sysconfig.get_paths()[key], "cmeel.prefix", "lib", "libmimalloc.so.*"))
        )
        if found:
            return min(found, key=len)  # libmimalloc.so.3 rather than libmimalloc.so.3.4
    return None


def mapped(fragment: str) -> bool:
    """Whether a shared library whose path contains ``fragment`` is mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            return any(fragment in line for line in f)
    except OSError:
        return False


def preload_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a child to start under mimalloc: the library put first in
    ``LD_PRELOAD``; unchanged where it is not installed."""
    env = dict(os.environ if env is None else env)
    lib = mimalloc_path()
    if lib is not None:
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    return env


def entry() -> None:
    """The ``heredity`` command: under ``HEREDITY_MALLOC=mimalloc`` (the default), starts itself again with
    mimalloc preloaded when it is installed and the user preloaded no allocator of their own (a library
    whose name holds ``malloc``); then runs ``cli.main``. A bad ``HEREDITY_MALLOC`` exits 2 with one line."""
    try:
        mode = choice()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _OUTER in os.environ:  # the restarted command: the user's LD_PRELOAD back for the programs it starts
        outer = os.environ.pop(_OUTER)
        if outer:
            os.environ["LD_PRELOAD"] = outer
        else:
            os.environ.pop("LD_PRELOAD", None)
    elif (
        mode == "mimalloc"
        and mimalloc_path() is not None
        and "malloc" not in os.environ.get("LD_PRELOAD", "")
    ):
        env = preload_env()  # (an allocator the user preloaded, jemalloc or tcmalloc, is kept)
        env[_OUTER] = os.environ.get("LD_PRELOAD", "")
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError:  # cannot start again: go on under glibc
            pass
    from heredity.cli import main  # which sets glibc's lean settings under HEREDITY_MALLOC=lean

    main()


def lean_malloc(mmap_threshold: int = 256 * 1024, arenas: int = 2) -> bool:
    """Set glibc's mmap threshold and arena count (see the module); whether they were set. A no-op (False) off
    Linux/glibc, under another allocator, or where the user set either through glibc's environment."""
    if not sys.platform.startswith("linux") or mapped("libmimalloc"):
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


def from_environment() -> bool:
    """``lean_malloc`` when ``HEREDITY_MALLOC=lean``; otherwise glibc stays as it is (False)."""
    return os.environ.get("HEREDITY_MALLOC", "") == "lean" and lean_malloc()
