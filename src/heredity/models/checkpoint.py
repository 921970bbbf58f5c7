"""Checking a local HF checkpoint directory before it is imported into the store.

An import copies the directory into the store under its content's id; what is stored is then kept (its bytes
match its id), so a bad checkpoint must be refused before the copy, in one line naming the file and the fix: a
``config.json`` (or any other ``.json``) that is not a UTF-8 JSON object, a ``.safetensors`` file whose header
does not fit it (``store.verify.safetensors_problem``, the check every load runs), a shard index whose
``weight_map`` names a file outside the directory (``../``) or one that is missing, a link that leads outside
the directory (but for the Hugging Face cache's links into its ``blobs``) or to a directory (the copy follows
links and could loop), and anything that is not a regular file (a FIFO would block the copy forever). What
this module does not know: loading.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from heredity.errors import HeredityError


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why ``directory`` cannot be imported as an HF checkpoint ("FILE: what is wrong"), or None."""
    from heredity.store.verify import safetensors_problem

    root = Path(directory)
    real_root = root.resolve()
    # a snapshot in the Hugging Face cache links each file to ../../blobs/<sha>: those links stay in the cache
    blobs = real_root.parent.parent / "blobs" if real_root.parent.name == "snapshots" else None
    if not (root / "config.json").is_file():
        return "config.json: missing, so it is not an HF model directory"
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if rel.split("/")[0].startswith(".") or "__pycache__" in rel.split("/"):
            continue  # not copied by the import
        if f.is_symlink():
            try:
                target = f.resolve(strict=True)
            except (OSError, RuntimeError):
                return f"{rel}: a broken or looping link"
            if target.is_dir():
                return (
                    f"{rel}: a link to a directory (the copy could loop or leave the model); "
                    "copy the directory in"
                )
            if not (target.is_relative_to(real_root) or target.parent == blobs):
                return f"{rel}: a link to {target}, outside the model directory"
        try:
            mode = f.stat().st_mode
        except OSError as e:
            return f"{rel}: cannot be read ({e.strerror or type(e).__name__})"
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            return f"{rel}: not a regular file (a pipe, socket or device)"
        if f.suffix == ".json":
            try:
                obj = json.loads(f.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as e:
                return f"{rel}: not UTF-8 (byte {e.start})"
            except (json.JSONDecodeError, RecursionError) as e:
                return (
                    f"{rel}: not JSON ({getattr(e, 'msg', type(e).__name__)}, "
                    f"line {getattr(e, 'lineno', '?')})"
                )
            except OSError as e:
                return f"{rel}: cannot be read ({e.strerror or type(e).__name__})"
            if not isinstance(obj, dict) and f.name in (
                "config.json",
                "tokenizer_config.json",
                "generation_config.json",
            ):
                return f"{rel}: not a JSON object"
            if f.name.endswith(".index.json"):
                wm = obj.get("weight_map") if isinstance(obj, dict) else None
                if not isinstance(wm, dict):
                    return f"{rel}: no 'weight_map' object"
                for shard in sorted({str(v) for v in wm.values()}):
                    if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
                        return f"{rel}: weight_map names {shard!r}, a path outside the directory"
                    if not (f.parent / shard).is_file():
                        return f"{rel}: weight_map names {shard}, which is not in the directory"
        elif f.suffix == ".safetensors":
            try:
                bad = safetensors_problem(f)
            except OSError as e:
                bad = f"cannot be read ({e.strerror or type(e).__name__})"
            if bad:
                return f"{rel}: {bad}"
    return None


def check_checkpoint(directory: str | Path) -> None:
    """Refuse a local checkpoint directory that cannot be imported (one line naming the file)."""
    bad = checkpoint_problem(directory)
    if bad:
        raise HeredityError(
            f"model directory {directory}: {bad}; fix or replace that file (e.g. download the "
            "checkpoint again)"
        )
