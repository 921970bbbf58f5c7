"""Getting rows into the store as dataset artifacts (parquet), with lineage; reading users' files.

A user's file is read once (``read_source``: its bytes and their sha256), checked in full before anything is
computed or stored, and every problem is one ``HeredityError`` naming the file, the line and the fix: bytes
that are not UTF-8, a line that is not a JSON object, a column whose type changes from one row to the next, a
required text column that is missing or null in some row (``require_columns``), a YAML config that is not a
mapping (``read_mapping``). The dataset's table is then made from those same bytes, so what is stored is what
was checked.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from heredity.errors import HeredityError
from heredity.store import Store, write_table
from heredity.store.ops import op, rows_op
from heredity.store.store import rows_digest

rows_op("make-dataset")  # rows made here, stored by data.io.put_rows

JSONL_SUFFIXES = (".jsonl", ".json")  # as store.read_table reads them; anything else is parquet
MAX_BLOCK = (1 << 31) - 1  # pyarrow's JSON block size is an int32


@dataclass(frozen=True)
class SourceFile:
    """A user's file, read once: its path, its bytes and their sha256 (a step may hold it: the digest is
    keyed)."""

    path: Path
    data: bytes = field(repr=False)
    sha256: str


def read_source(path: str | Path, what: str, hint: str) -> SourceFile:
    """The bytes of the file ``path`` (``what`` names it in errors, ``hint`` says what to give instead)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise HeredityError(f"{what} {p} does not exist; {hint}")
    if not p.is_file():
        raise HeredityError(f"{what} {p} is not a regular file; {hint}")
    try:
        data = p.read_bytes()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise HeredityError(f"cannot read {what} {p} ({why}); check its permissions") from None
    return SourceFile(p, data, hashlib.sha256(data).hexdigest())


def decode_text(src: SourceFile, what: str) -> str:
    """The file as text: UTF-8 (a leading byte-order mark dropped), or an error naming the line and the
    byte."""
    data = src.data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise HeredityError(
            f"{what} {src.path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {col}); "
            "save the file as UTF-8"
        ) from None


def text_lines(path: str | Path, what: str, hint: str) -> list[str]:
    """The lines of a UTF-8 text file (e.g. prompts, one per line)."""
    return decode_text(read_source(path, what, hint), what).splitlines()


def _kind(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "text"
    return "a list" if isinstance(v, list) else "an object"


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def jsonl_rows(src: SourceFile, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not one JSON object is an error naming
    it."""
    lines = decode_text(src, what).split("\n")
    last = max((i for i, ln in enumerate(lines, 1) if ln.strip()), default=0)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            cut = "; the file looks cut short" if i == last and not line.rstrip().endswith("}") else ""
            raise HeredityError(
                f"{what} {src.path}:{i}: not JSON ({e.msg}, column {e.colno}){cut}; write one JSON "
                "object per line"
            ) from None
        except ValueError as e:  # NaN / Infinity: Python reads them, JSON (and pyarrow) does not
            raise HeredityError(f"{what} {src.path}:{i}: not JSON ({e}); write numbers or null") from None
        except RecursionError:
            raise HeredityError(
                f"{what} {src.path}:{i}: nested too deeply to read; flatten the row"
            ) from None
        if not isinstance(row, dict):
            raise HeredityError(
                f"{what} {src.path}:{i}: {_kind(row) or 'null'} where a JSON object belongs; write one "
                'object ({"column": value, ...}) per line'
            )
        yield i, row


@dataclass(frozen=True)
class DatasetFile:
    """A dataset file read once and checked: its bytes (``source``), the table made from them, and the line of
    each row (JSONL; None for parquet), so a problem found later in a row can still name its line."""

    source: SourceFile
    table: pa.Table
    lines: tuple[int, ...] | None

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def sha256(self) -> str:
        return self.source.sha256

    def where(self, row: int) -> str:
        return f"{self.path}:{self.lines[row]}" if self.lines is not None else f"{self.path} row {row + 1}"


def _check_kinds(rows: Iterator[tuple[int, dict]], what: str, path: Path) -> list[int]:
    """The line of every row; a value whose JSON type differs from the same column's on an earlier line (at
    any depth, as pyarrow types them: int and float are both numbers) is an error naming both lines."""
    first: dict[str, tuple[str, int]] = {}
    lines: list[int] = []

    for line, row in rows:
        lines.append(line)
        todo = [(f"/{key}", v) for key, v in row.items()]  # a stack, not recursion: rows may nest deeply
        while todo:
            col, v = todo.pop()
            k = _kind(v)
            if k is None:
                continue
            seen = first.setdefault(col, (k, line))
            if seen[0] != k:
                raise HeredityError(
                    f"{what} {path}:{line}: {col.lstrip('/')!r} is {k} here but {seen[0]} on line "
                    f"{seen[1]}; give a column one type in every row"
                )
            if isinstance(v, dict):
                todo += [(f"{col}/{key}", x) for key, x in v.items()]
            elif isinstance(v, list):
                todo += [(f"{col}/[]", x) for x in v]
    return lines


def read_dataset_file(path: str | Path) -> DatasetFile:
    """A JSONL (``.jsonl``/``.json``) or parquet file as a table, read once and checked in full."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    what = "cannot read dataset"
    src = read_source(path, "dataset file", "give a JSONL or parquet file")
    p = src.path
    if p.suffix in JSONL_SUFFIXES:
        lines = _check_kinds(jsonl_rows(src, what), what, p)
        if not lines:
            raise HeredityError(f"dataset file {p} has no rows; write one JSON object per line")
        body = io.BytesIO(src.data)
        try:
            try:
                table = pj.read_json(body)
            except pa.ArrowInvalid as e:  # a row longer than pyarrow's block (1 MiB): read in one block
                if "straddl" not in str(e):
                    raise
                table = pj.read_json(
                    io.BytesIO(src.data),
                    read_options=pj.ReadOptions(block_size=min(len(src.data) + 1, MAX_BLOCK)),
                )
        except (pa.ArrowException, OSError) as e:
            raise HeredityError(
                f"{what} {p}: {_first_line(e)}; give one JSON object per line, a column one type"
            ) from None
        if table.num_rows != len(lines):
            raise HeredityError(
                f"{what} {p}: {table.num_rows} rows read from {len(lines)} lines; write one JSON "
                "object per line"
            )
        return DatasetFile(src, table, tuple(lines))
    try:
        table = pq.read_table(pa.BufferReader(src.data))
        table.validate(full=True)  # e.g. strings that are not UTF-8
    except (pa.ArrowException, OSError) as e:
        raise HeredityError(
            f"{what} {p}: {_first_line(e)}; give a parquet file, or JSONL named .jsonl"
        ) from None
    if table.num_rows == 0:
        raise HeredityError(f"dataset file {p} has no rows")
    return DatasetFile(src, table, None)


def read_rows(path: str | Path, what: str, hint: str) -> list[dict]:
    """The rows of a JSONL file as Python objects (as ``json.loads`` reads them), or of a ``.parquet``
    file."""
    p = Path(path).expanduser()
    if p.suffix == ".parquet":
        return read_dataset_file(p).table.to_pylist()
    return [row for _, row in jsonl_rows(read_source(p, what, hint), f"cannot read {what}")]


TEXT_COLUMNS = ("prompt", "completion", "text")


def check_columns(
    table: pa.Table, needed: Sequence[str], what: str, where: Callable[[int], str], source: str
) -> None:
    """Every column in ``needed`` present, and in every row a value: text for prompt/completion/text, a list
    for ``messages``. ``where(i)`` names row ``i`` (a file's line); ``source`` names the whole (a file, a
    dataset id)."""
    import pyarrow.compute as pc

    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise HeredityError(
            f"{source}: {what} needs column(s) {', '.join(missing)} but it has "
            f"{', '.join(table.column_names) or 'none'}; rename the columns or pick another loss"
        )
    for c in needed:
        col = table.column(c)
        text = c in TEXT_COLUMNS
        want = "text" if text else "a list"
        ok = (
            (pa.types.is_string(col.type) or pa.types.is_large_string(col.type))
            if text
            else (pa.types.is_list(col.type) or pa.types.is_large_list(col.type))
        )
        if not ok and not pa.types.is_null(col.type):
            i = pc.index(pc.is_valid(col), True).as_py()
            raise HeredityError(
                f"{where(max(i, 0))}: {c!r} is {_kind(col[max(i, 0)].as_py()) or 'null'}, not {want}; "
                f"{what} needs {want} in {c!r} in every row"
            )
        i = pc.index(pc.is_null(col), True).as_py() if col.null_count else -1
        if i >= 0:
            raise HeredityError(
                f"{where(i)}: {c!r} is missing or null; {what} needs {want} in {c!r} in every row "
                "(fill it in or drop the row)"
            )


def read_mapping(path: str | Path, what: str, hint: str) -> dict:
    """A YAML (or JSON) file holding a mapping; empty: ``{}``. Errors name the line YAML stopped at."""
    import yaml

    src = read_source(path, what, hint)
    text = decode_text(src, what)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or _first_line(e)
        raise HeredityError(
            f"{what} {src.path}{at}: not valid YAML ({problem}); fix the syntax ({hint})"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HeredityError(
            f"{what} {src.path}: holds {_kind(raw)} at the top, not a mapping; write one 'key: value' "
            f"per line ({hint})"
        )
    bad = [k for k in raw if not isinstance(k, str)]
    if bad:
        raise HeredityError(
            f"{what} {src.path}: key {bad[0]!r} is not text; write 'name: value' per line ({hint})"
        )
    return raw


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


@op("import-dataset", 1)
def import_dataset(store: Store, path: str | Path | DatasetFile, name: str | None = None) -> str:
    """Import a JSONL or parquet file (or one already read by ``read_dataset_file``) as a dataset artifact,
    memoized on the file's content. The file is read once; nothing is stored unless all of it reads."""
    f = path if isinstance(path, DatasetFile) else read_dataset_file(path)
    p = f.path

    def run(ctx):
        meta = {"rows": f.table.num_rows, "columns": f.table.column_names}
        out = ctx.output("dataset", "dataset", name or p.stem, meta=meta)
        write_table(out, f.table)
        return {"rows": f.table.num_rows}

    cfg = {"source": "file", "path": str(p.resolve()), "sha256": f.sha256}
    return store.run_step("import-dataset", cfg, [], run)["dataset"]


def put_rows(
    store: Store, rows: Sequence[dict], name: str, op: str = "make-dataset", config=None, inputs=()
) -> str:
    """Store rows made in Python as a dataset artifact; ``config`` and ``inputs`` record how they were made.

    The rows' digest is always part of the key, so a changed generator gives a new dataset, never the old
    one."""
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
