"""Integrity of stored artifacts: the cheap check on every load and the full re-hash (``heredity fsck``).

An artifact's id is a prefix of the sha256 of its files (``store.hash_dir``), so the store can always tell
whether the bytes on disk are the bytes it stored. A full re-hash reads every byte; the cheap check reads only
metadata: each file's presence and size against the manifest recorded when the artifact was stored, and the
header of each safetensors file (its JSON parses and its tensors fit the file exactly). A file whose mtime
differs from the manifest was written after it was stored, and is re-hashed on its next load. What this module
does not know: which steps made an artifact or what to recompute (``Store.fsck`` says that).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER = 100 << 20  # safetensors refuses headers over 100 MB too


def manifest(path: Path) -> dict[str, list[int]]:
    """{relative path: [size, mtime_ns]} of every file under ``path``."""
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        out[f.relative_to(path).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


def safetensors_problem(f: Path) -> str | None:
    """Why ``f`` is not a well-formed safetensors file (header length, JSON, tensor offsets), or None."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            return f"header length {n} does not fit the file ({size} bytes)"
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return (
            f"header is not JSON ({e.__class__.__name__} at byte "
            f"{getattr(e, 'pos', getattr(e, 'start', '?'))})"
        )
    if not isinstance(header, dict):
        return "header is not a JSON object"
    data_len, end = size - 8 - n, 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offs = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            return f"tensor {name!r} has no valid data_offsets"
        if not 0 <= offs[0] <= offs[1] <= data_len:
            return f"tensor {name!r} lies outside the file (offsets {offs}, {data_len} data bytes)"
        end = max(end, offs[1])
    if end != data_len:
        return f"tensors cover {end} of {data_len} data bytes"
    return None


def quick_problems(path: Path, recorded: dict[str, list[int]]) -> tuple[list[str], bool]:
    """(problems found from metadata alone, whether any file changed since it was recorded so needs a
    re-hash)."""
    problems: list[str] = []
    changed = False
    have = manifest(path)
    for rel, (size, mtime) in recorded.items():
        now = have.get(rel)
        if now is None:
            problems.append(f"{rel}: missing")
            continue
        if now[0] != size:
            problems.append(f"{rel}: {now[0]} bytes, stored {size}")
            continue
        if now[1] != mtime:
            changed = True
        if rel.endswith(".safetensors"):
            why = safetensors_problem(path / rel)
            if why:
                problems.append(f"{rel}: {why}")
    for rel in sorted(set(have) - set(recorded)):
        problems.append(f"{rel}: not part of the stored artifact")
    return problems, changed
