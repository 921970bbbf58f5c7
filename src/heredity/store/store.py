"""The artifact store: content-addressed artifacts on disk, steps and lineage in a database.

Everything heredity makes is the output of a *step*: an operation run on input artifacts with a
typed config. ``Store.run_step`` memoizes steps on (op, config, inputs, seed): when the same step
already finished, its stored outputs come back at once. A step writes its outputs into private
temporary directories; only when it returns are they hashed, renamed into place (an atomic rename on
the same filesystem) and recorded in the database, the row last. A step killed half-way therefore
leaves nothing visible, and the next run starts it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from heredity.errors import HeredityError
from heredity.store.db import ArtifactRow, Base, StepRow, add_missing_columns, make_engine
from heredity.store.ops import op_version

KIND_PREFIX = {"model": "m", "adapter": "a", "dataset": "d", "report": "r", "tokenizer": "t"}
ID_RE = re.compile(r"^[madrt]-[0-9a-f]{16}$")
ID_PREFIX_RE = re.compile(r"^[madrt]-[0-9a-f]{4,16}$")


def default_home() -> Path:
    env = os.environ.get("HEREDITY_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "heredity"


def finite_json(x: Any) -> Any:
    """``x`` with NaN and ±inf as None: strict JSON (PostgreSQL's json type refuses NaN)."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_json(v) for v in x]
    return x


def config_to_json(config: Any) -> dict:
    """A typed config (pydantic model, dataclass or dict) as plain, strict JSON data (NaN becomes None)."""
    if config is None:
        return {}
    if hasattr(config, "model_dump"):
        return finite_json(config.model_dump(mode="json"))
    if dataclasses.is_dataclass(config):
        return finite_json(json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    if isinstance(config, dict):
        return finite_json(json.loads(json.dumps(config, default=str)))
    raise TypeError(f"config must be a pydantic model, dataclass or dict, not {type(config).__name__}")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def step_key(op: str, config: dict, inputs: Iterable[str], seed: int | None, version: int | None = None) -> str:
    """sha256 of (op, its semantic version, canonical config, ordered input ids, seed): everything that can change
    a step's output. ``version`` defaults to the op's entry in ``heredity.store.ops``."""
    v = op_version(op) if version is None else version
    payload = canonical({"op": op, "version": v, "config": config, "inputs": list(inputs), "seed": seed})
    return hashlib.sha256(payload.encode()).hexdigest()


# ---- the key guard: a step function may only see what its key holds -----------------------------

ALWAYS_ALLOWED_NAMES = frozenset({"store", "ctx", "progress", "log", "name", "self"})


def rows_digest(rows: Any) -> str:
    """sha256 of rows (any JSON data) as sorted JSON: how ``put_rows`` keys a dataset made in Python, and how the key
    guard recognizes such data in a step's closure (one formula for both)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def _digest_of(value: Any) -> str | None:
    try:
        return rows_digest(value)
    except (TypeError, ValueError):
        return None


def _key_index(config: dict, inputs: list[str], seed: int | None) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(canonical JSON of every subtree of the config, {key name: canonical values}, string leaves)."""
    subtrees: set[str] = set()
    named: dict[str, set[str]] = {}
    leaves: set[str] = set(inputs)

    def walk(x: Any) -> None:
        subtrees.add(canonical(x))
        if isinstance(x, dict):
            for k, v in x.items():
                named.setdefault(str(k), set()).add(canonical(v))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            leaves.add(x)

    walk(config)
    named.setdefault("seed", set()).add(canonical(seed))
    return subtrees, named, leaves


def check_key_covers(fn: Callable, op: str, config: dict, inputs: list[str], seed: int | None) -> None:
    """Raise when ``fn`` can see, through its closure, a value that is not in the step key.

    Allowed: the store, progress/log callbacks and the output name; None; modules, classes and module-level
    functions (code: covered by the op version); input artifact ids (and lists/dicts of them); values equal to a
    subtree of the config; values whose ``rows_digest`` (sha256 of sorted JSON) is in the config; scalars whose
    variable name is a key of the config with the same value (or the seed); paths the config names; objects whose
    ``sha256`` attribute is in the config. Nested closures are checked too.
    """
    subtrees, named, leaves = _key_index(config, inputs, seed)
    seen: set[int] = set()

    def ok_value(name: str, v: Any) -> bool:
        if v is None or name in ALWAYS_ALLOWED_NAMES or isinstance(v, (Store, StepContext)):
            return True
        if isinstance(v, type) or inspect.ismodule(v) or inspect.isbuiltin(v):
            return True
        if callable(v):
            if inspect.isfunction(v):
                check_fn(v)
                return True
            if inspect.ismethod(v):
                return ok_value(name, v.__self__)
            return False
        if isinstance(v, str) and (v in inputs or (len(v) >= 8 and v in leaves)):  # short strings must match by name
            return True
        if isinstance(v, Path):  # a source file or directory the config names (its content hash keyed beside it)
            return str(v) in leaves or str(v.resolve()) in leaves or v.name in leaves
        if isinstance(getattr(v, "sha256", None), str) and v.sha256 in leaves:  # content-addressed by its digest
            return True
        if isinstance(v, (list, tuple, set)) and all(isinstance(x, str) and x in inputs for x in v):
            return True  # input ids (or nothing)
        if isinstance(v, dict) and all(isinstance(x, str) and x in inputs for x in v.values()):
            return True
        try:
            j = config_to_json(v) if (hasattr(v, "model_dump") or dataclasses.is_dataclass(v)) else json.loads(
                json.dumps(v, default=_no_default))
        except (TypeError, ValueError):
            return False
        c = canonical(j)
        if isinstance(j, (dict, list)) and (c in subtrees or _digest_of(j) in leaves or _digest_of(v) in leaves):
            return True
        if c in named.get(name, ()):
            return True
        return False

    def check_fn(f: Callable) -> None:
        if id(f) in seen or not getattr(f, "__closure__", None):
            return
        seen.add(id(f))
        for var, cell in zip(f.__code__.co_freevars, f.__closure__, strict=True):
            try:
                v = cell.cell_contents
            except ValueError:  # an unassigned cell
                continue
            if not ok_value(var, v):
                raise KeyCoverageError(
                    f"step {op}: its function {f.__qualname__} sees {var!r} = {_short(v)}, which is not in the step key; "
                    "put it in the step's config (or read it inside the step from an input artifact)"
                )

    check_fn(fn)


class KeyCoverageError(AssertionError):
    """A step function can see a value its key does not hold (a programming error, raised under
    HEREDITY_CHECK_KEYS=1)."""


def _no_default(o: Any) -> Any:
    raise TypeError(f"not JSON: {type(o).__name__}")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def hash_dir(path: Path) -> str:
    """sha256 over the relative paths and bytes of every file under ``path`` (sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _git(*args: str) -> str:
    try:
        r = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


@cache
def code_version() -> str:
    """heredity's version plus the git commit it runs from (``.dirty`` with uncommitted changes)."""
    from heredity import __version__

    sha = _git("rev-parse", "--short=12", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no") if sha else ""
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__


@cache
def lib_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class Artifact:
    id: str
    kind: str
    name: str
    path: Path
    step_key: str
    meta: dict
    size_bytes: int
    created_at: datetime


@dataclass
class Step:
    key: str
    op: str
    config: dict
    inputs: list[str]
    outputs: dict[str, str]
    seed: int | None
    metrics: dict
    code_version: str
    lib_versions: dict
    host: str
    started_at: datetime
    ended_at: datetime


@dataclass
class StepResult:
    key: str
    outputs: dict[str, str]
    metrics: dict
    cached: bool

    def __getitem__(self, role: str) -> str:
        return self.outputs[role]


@dataclass
class StepContext:
    """What a running step sees: where to write outputs and where to put metrics."""

    store: Store
    key: str
    op: str
    config: dict
    inputs: list[str]
    seed: int | None
    metrics: dict = field(default_factory=dict)
    _outputs: dict[str, tuple[str, str, Path, dict]] = field(default_factory=dict)

    def output(self, role: str, kind: str, name: str, meta: dict | None = None) -> Path:
        """A fresh private directory to write the output ``role`` into."""
        if kind not in KIND_PREFIX:
            raise ValueError(f"unknown artifact kind {kind!r}")
        if role in self._outputs:
            raise ValueError(f"output {role!r} declared twice")
        path = self.store.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        self._outputs[role] = (kind, name, path, dict(meta or {}))
        return path

    def set_meta(self, role: str, **meta: Any) -> None:
        self._outputs[role][3].update(meta)

    @property
    def scratch(self) -> Path:
        """A per-step directory that survives a kill (for checkpoints); removed when the step ends."""
        p = self.store.home / "scratch" / self.key[:24]
        p.mkdir(parents=True, exist_ok=True)
        return p


class Store:
    """``Store()`` opens HEREDITY_HOME (default ~/.local/share/heredity) and HEREDITY_DB_URL (default SQLite)."""

    def __init__(self, home: str | Path | None = None, db_url: str | None = None):
        self.home = Path(home).expanduser() if home else default_home()
        self.artifacts_dir = self.home / "artifacts"
        self.tmp_dir = self.home / "tmp"
        try:
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HeredityError(
                f"cannot create the store at {self.home}: {e.strerror}; set HEREDITY_HOME to a writable directory"
            ) from e
        self.db_url = db_url or os.environ.get("HEREDITY_DB_URL") or f"sqlite:///{self.home / 'heredity.db'}"
        self.engine = make_engine(self.db_url)
        try:
            Base.metadata.create_all(self.engine)
            add_missing_columns(self.engine)
        except (OperationalError, SQLAlchemyError) as e:
            reason = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HeredityError(
                f"cannot reach the database {redact(self.db_url)} ({reason}); "
                "check HEREDITY_DB_URL, or unset it to use the SQLite file in HEREDITY_HOME"
            ) from e
        self._clean_tmp()
        # `heredity run NAME --recompute OP`: steps of these ops ignore their memoized result, and so does every
        # step that consumes an output recomputed in this session (``_fresh``)
        self.recompute: set[str] = set()
        self._fresh: set[str] = set()
        self.check_keys = os.environ.get("HEREDITY_CHECK_KEYS", "") not in ("", "0")

    def __repr__(self) -> str:
        return f"Store(home={str(self.home)!r}, db={redact(self.db_url)!r})"

    # ---- housekeeping -------------------------------------------------------------------------
    def _clean_tmp(self) -> None:
        """Remove temporary output dirs left by processes that no longer run (killed steps)."""
        for p in self.tmp_dir.iterdir():
            pid = p.name.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)

    # ---- steps ------------------------------------------------------------------------------
    def find_step(self, key: str) -> Step | None:
        with Session(self.engine) as s:
            row = s.get(StepRow, key)
            return _step(row) if row else None

    def run_step(
        self,
        op: str,
        config: Any,
        inputs: Iterable[str] = (),
        fn: Callable[[StepContext], dict | None] | None = None,
        seed: int | None = None,
    ) -> StepResult:
        """Run ``fn`` as step ``op`` unless the same step already finished; return its outputs.

        ``fn(ctx)`` writes each output into ``ctx.output(role, kind, name)`` and may return metrics.
        """
        cfg = config_to_json(config)
        inputs = [self.resolve_id(i) for i in inputs]
        key = step_key(op, cfg, inputs, seed)
        if fn is not None and self.check_keys and op_version(op) is not None:  # heredity's own ops
            check_key_covers(fn, op, cfg, inputs, seed)
        force = fn is not None and (op in self.recompute or any(i in self._fresh for i in inputs))
        done = self.find_step(key)
        if not force and done and all((self.artifacts_dir / a).is_dir() for a in done.outputs.values()):
            return StepResult(key, dict(done.outputs), dict(done.metrics), cached=True)
        if fn is None:
            raise HeredityError(f"step {op} has not run yet and no function was given to run it")
        ctx = StepContext(self, key, op, cfg, inputs, seed)
        started = _now()
        try:
            metrics = fn(ctx) or {}
        except BaseException:
            for _, _, path, _ in ctx._outputs.values():
                shutil.rmtree(path, ignore_errors=True)
            raise
        ctx.metrics = finite_json(json.loads(canonical({**ctx.metrics, **metrics})))  # strict JSON, once
        outputs = self._commit(ctx, started)
        if force:
            self._fresh.update(outputs.values())
        shutil.rmtree(self.home / "scratch" / key[:24], ignore_errors=True)
        return StepResult(key, outputs, dict(ctx.metrics), cached=False)

    def _commit(self, ctx: StepContext, started: datetime) -> dict[str, str]:
        placed: dict[str, tuple[str, str, dict, int]] = {}
        for role, (kind, name, path, meta) in ctx._outputs.items():
            aid = f"{KIND_PREFIX[kind]}-{hash_dir(path)[:16]}"
            size = dir_size(path)
            final = self.artifacts_dir / aid
            if final.is_dir():
                shutil.rmtree(path)  # same content already stored
            else:
                try:
                    os.rename(path, final)
                except OSError:  # a concurrent writer placed it first
                    if not final.is_dir():
                        raise
                    shutil.rmtree(path, ignore_errors=True)
            placed[role] = (aid, kind, {"name": name, **meta}, size)
        outputs = {role: v[0] for role, v in placed.items()}
        now = _now()
        with Session(self.engine) as s:
            s.merge(
                StepRow(
                    key=ctx.key,
                    op=ctx.op,
                    config=ctx.config,
                    inputs=ctx.inputs,
                    outputs=outputs,
                    seed=ctx.seed,
                    metrics=ctx.metrics,
                    code_version=code_version(),
                    lib_versions=lib_versions(),
                    host=socket.gethostname(),
                    started_at=started,
                    ended_at=now,
                )
            )
            s.flush()
            for aid, kind, meta, size in placed.values():
                if s.get(ArtifactRow, aid) is None:
                    name = meta.pop("name")
                    s.add(
                        ArtifactRow(
                            id=aid, kind=kind, name=name, step_key=ctx.key, meta=meta, size_bytes=size, created_at=now
                        )
                    )
            try:
                s.commit()
            except IntegrityError:  # a concurrent run of the same step committed first
                s.rollback()
        return outputs

    # ---- artifacts --------------------------------------------------------------------------
    def resolve_id(self, ref: str) -> str:
        """A full artifact id from an id or a unique id prefix (``m-3fa2``)."""
        ref = str(ref).strip()
        if not ID_PREFIX_RE.match(ref):
            raise HeredityError(
                f"{ref!r} is not an artifact id (expected like m-0123456789abcdef); list ids with `heredity ls`"
            )
        with Session(self.engine) as s:
            if ID_RE.match(ref):
                if s.get(ArtifactRow, ref) is not None:
                    return ref
                matches = []
            else:
                matches = s.scalars(select(ArtifactRow.id).where(ArtifactRow.id.startswith(ref)).limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise HeredityError(f"artifact prefix {ref!r} is ambiguous; give more characters of the id")
        raise HeredityError(f"no artifact {ref!r} in the store at {self.home}; list ids with `heredity ls`")

    def get(self, ref: str) -> Artifact:
        aid = self.resolve_id(ref)
        with Session(self.engine) as s:
            row = s.get(ArtifactRow, aid)
            art = _artifact(row, self.artifacts_dir)
        if not art.path.is_dir():
            raise HeredityError(f"artifact {aid} is recorded but its files are missing from {art.path}; rerun the step")
        return art

    def path(self, ref: str) -> Path:
        return self.get(ref).path

    def list(self, kind: str | None = None) -> list[Artifact]:
        with Session(self.engine) as s:
            q = select(ArtifactRow).order_by(ArtifactRow.created_at)
            if kind:
                q = q.where(ArtifactRow.kind == kind)
            return [_artifact(r, self.artifacts_dir) for r in s.scalars(q)]

    def step_of(self, ref: str) -> Step:
        art = self.get(ref)
        step = self.find_step(art.step_key)
        assert step is not None, f"artifact {art.id} has no step row"
        return step

    def children(self, ref: str) -> list[Artifact]:
        """Artifacts made by steps that took ``ref`` as an input."""
        aid = self.resolve_id(ref)
        with Session(self.engine) as s:
            steps = [r for r in s.scalars(select(StepRow)) if aid in (r.inputs or [])]
            ids = {a for r in steps for a in r.outputs.values()}
            rows = [s.get(ArtifactRow, i) for i in sorted(ids)]
            return [_artifact(r, self.artifacts_dir) for r in rows if r is not None]

    def lineage(self, ref: str) -> dict:
        """The ancestry of an artifact as a nested dict: artifact -> step -> input artifacts -> ..."""
        seen: dict[str, dict] = {}

        def node(aid: str) -> dict:
            if aid in seen:
                return {"id": aid, "kind": seen[aid]["kind"], "name": seen[aid]["name"], "see_above": True}
            art = self.get(aid)
            step = self.find_step(art.step_key)
            n = {
                "id": art.id,
                "kind": art.kind,
                "name": art.name,
                "meta": art.meta,
                "step": {
                    "op": step.op,
                    "key": step.key[:16],
                    "config": step.config,
                    "seed": step.seed,
                    "metrics": step.metrics,
                    "code_version": step.code_version,
                    "host": step.host,
                    "started_at": step.started_at.isoformat(),
                    "ended_at": step.ended_at.isoformat(),
                }
                if step
                else None,
            }
            seen[aid] = n
            n["parents"] = [node(i) for i in (step.inputs if step else [])]
            return n

        return node(self.resolve_id(ref))


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _artifact(row: ArtifactRow, root: Path) -> Artifact:
    return Artifact(row.id, row.kind, row.name, root / row.id, row.step_key, row.meta or {}, row.size_bytes, row.created_at)


def _step(row: StepRow) -> Step:
    return Step(
        row.key,
        row.op,
        row.config,
        list(row.inputs or []),
        dict(row.outputs or {}),
        row.seed,
        row.metrics or {},
        row.code_version,
        row.lib_versions or {},
        row.host,
        row.started_at,
        row.ended_at,
    )
