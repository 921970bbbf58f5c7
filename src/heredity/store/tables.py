"""Datasets are parquet files: ``<artifact>/data.parquet``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from heredity.errors import HeredityError

DATA_FILE = "data.parquet"


def write_table(directory: Path, rows: pa.Table | Sequence[dict]) -> pa.Table:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
    pq.write_table(table, directory / DATA_FILE)
    return table


def read_table(path: Path) -> pa.Table:
    """Read a dataset from an artifact dir, a parquet file or a JSONL file."""
    path = Path(path)
    if path.is_dir():
        path = path / DATA_FILE
    if not path.exists():
        raise HeredityError(f"dataset file {path} does not exist; check the path")
    try:
        if path.suffix in (".jsonl", ".json"):
            import pyarrow.json as pj

            return pj.read_json(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HeredityError(f"cannot read dataset {path}: {first}; give a parquet or JSONL file") from e


def require_columns(table: pa.Table, needed: Iterable[str], what: str) -> None:
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise HeredityError(
            f"{what} needs column(s) {', '.join(missing)} but the dataset has "
            f"{', '.join(table.column_names) or 'none'}; rename the columns or pick another loss"
        )
