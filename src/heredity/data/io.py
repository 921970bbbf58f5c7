"""Getting rows into the store as dataset artifacts (parquet), with lineage."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from heredity.errors import HeredityError
from heredity.store import Store, read_table, write_table
from heredity.store.store import rows_digest


def import_dataset(store: Store, path: str | Path, name: str | None = None) -> str:
    """Import a JSONL or parquet file as a dataset artifact (memoized on the file's content)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise HeredityError(f"dataset file {p} does not exist; give a JSONL or parquet file")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    checked = read_table(p)  # validates before anything is written
    if checked.num_rows == 0:
        raise HeredityError(f"dataset file {p} has no rows")

    def run(ctx):
        if hashlib.sha256(p.read_bytes()).hexdigest() != digest:
            raise HeredityError(f"dataset file {p} changed while it was being imported; import it again")
        table = read_table(p)
        out = ctx.output("dataset", "dataset", name or p.stem, meta={"rows": table.num_rows, "columns": table.column_names})
        write_table(out, table)
        return {"rows": table.num_rows}

    cfg = {"source": "file", "path": str(p.resolve()), "sha256": digest}
    return store.run_step("import-dataset", cfg, [], run)["dataset"]


def put_rows(store: Store, rows: Sequence[dict], name: str, op: str = "make-dataset", config=None, inputs=()) -> str:
    """Store rows made in Python as a dataset artifact; ``config`` and ``inputs`` record how they were made.

    The rows' digest is always part of the key, so a changed generator gives a new dataset, never the old one."""
    from heredity.store import config_to_json

    rows = list(rows)
    if not rows:
        raise HeredityError(f"dataset {name} has no rows")
    cfg = {**(config_to_json(config) if config is not None else {}), "rows_sha256": rows_digest(rows)}

    def run(ctx):
        out = ctx.output("dataset", "dataset", name, meta={"rows": len(rows), "columns": list(rows[0])})
        write_table(out, rows)
        return {"rows": len(rows)}

    return store.run_step(op, cfg, inputs, run)["dataset"]
