"""The artifact store: content-addressed artifacts on disk, steps and lineage in a database.

Everything heredity makes is the output of a *step*: an operation run on input artifacts with a
typed config. ``Store.run_step`` memoizes steps on (op, config, inputs, seed): when the same step
already finished, its stored outputs come back at once. A step writes its outputs into private
temporary directories; only when it returns are they hashed, renamed into place (an atomic rename on
the same filesystem) and recorded in the database, the row last. A step killed half-way therefore
leaves nothing visible, and the next run starts it again.

Concurrency: one step key is computed by one process at a time (a PostgreSQL advisory lock, or a file lock
beside the SQLite database); a second process asking for the same step waits, then reuses the result.
Temporary outputs live under ``tmp/<host>/<pid>.<process start>.<random>``, so opening a store shared by
several hosts only ever cleans what dead processes of *this* host left. Integrity: every load re-checks the
files against the manifest recorded when the artifact was stored (``heredity.store.verify``), and
``Store.fsck`` re-hashes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from heredity.errors import HeredityError
from heredity.store import verify
from heredity.store.db import (
    ArtifactRow,
    ArtifactStepRow,
    Base,
    ModelAliasRow,
    PromptAliasRow,
    StepRow,
    add_missing_columns,
    make_engine,
)
from heredity.store.ops import is_distributed, op_version, world_size

KIND_PREFIX = {"model": "m", "adapter": "a", "dataset": "d", "report": "r", "tokenizer": "t", "prompt": "p"}
ID_RE = re.compile(r"^[madrtp]-[0-9a-f]{16}$")
ID_PREFIX_RE = re.compile(r"^[madrtp]-[0-9a-f]{4,16}$")
# a prompt template's name and an alias of its versions (``heredity.prompts``): neither holds the ":", "@" or
# "/" of a reference (``Store.resolve_prompt``)
PROMPT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
PROMPT_ALIAS = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
PROMPT_REFS = "p-ID, NAME, NAME:N, NAME@ALIAS, prompts:/NAME/N or prompts:/NAME@ALIAS"
STALE_SECONDS = 3600.0  # fsck: a leftover untouched this long belongs to no running step (see ``Store.fsck``)
FOREIGN_TMP_SECONDS = 86400.0  # another host's tmp dir: its process cannot be asked, so a day of no change


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


def step_key(
    op: str, config: dict, inputs: Iterable[str], seed: int | None, version: int | None = None
) -> str:
    """sha256 of (op, its semantic version, canonical config, ordered input ids, seed): everything that can
    change a step's output. ``version`` defaults to the op's entry in ``heredity.store.ops``."""
    v = op_version(op) if version is None else version
    payload = canonical({"op": op, "version": v, "config": config, "inputs": list(inputs), "seed": seed})
    return hashlib.sha256(payload.encode()).hexdigest()


# ---- the key guard: a step function may only see what its key holds -----------------------------

ALWAYS_ALLOWED_NAMES = frozenset({"store", "ctx", "progress", "log", "name", "self"})


def rows_digest(rows: Any) -> str:
    """sha256 of rows (any JSON data) as sorted JSON: how ``put_rows`` keys a dataset made in Python, and how
    the key guard recognizes such data in a step's closure (one formula for both)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def _digest_of(value: Any) -> str | None:
    try:
        return rows_digest(value)
    except (TypeError, ValueError):
        return None


def _key_index(
    config: dict, inputs: list[str], seed: int | None
) -> tuple[set[str], dict[str, set[str]], set[str]]:
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
    functions (code: covered by the op version); input artifact ids (and lists/dicts of them); values equal to
    a subtree of the config; values whose ``rows_digest`` (sha256 of sorted JSON) is in the config; scalars
    whose variable name is a key of the config with the same value (or the seed); paths the config names;
    objects whose ``sha256`` attribute is in the config. Nested closures are checked too.
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
        if isinstance(v, str) and (
            v in inputs or (len(v) >= 8 and v in leaves)
        ):  # short strings must match by name
            return True
        if isinstance(
            v, Path
        ):  # a source file or directory the config names (its content hash keyed beside it)
            return str(v) in leaves or str(v.resolve()) in leaves or v.name in leaves
        if (
            isinstance(getattr(v, "sha256", None), str) and v.sha256 in leaves
        ):  # content-addressed by its digest
            return True
        if isinstance(v, (list, tuple, set)) and all(isinstance(x, str) and x in inputs for x in v):
            return True  # input ids (or nothing)
        if isinstance(v, dict) and all(isinstance(x, str) and x in inputs for x in v.values()):
            return True
        try:
            j = (
                config_to_json(v)
                if (hasattr(v, "model_dump") or dataclasses.is_dataclass(v))
                else json.loads(json.dumps(v, default=_no_default))
            )
        except (TypeError, ValueError):
            return False
        c = canonical(j)
        if isinstance(j, (dict, list)) and (
            c in subtrees or _digest_of(j) in leaves or _digest_of(v) in leaves
        ):
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
                    f"step {op}: its function {f.__qualname__} sees {var!r} = {_short(v)}, "
                    "which is not in the step key; "
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


HASH_VERSION = 2  # the ``hash_dir`` version new artifacts' ids come from (``ArtifactRow.hash_version``)


def _file_sha256(f: Path) -> bytes:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.digest()


def hash_dir(path: Path, version: int = HASH_VERSION) -> str:
    """The sha256 of the files under ``path`` (hex): an artifact's id is its kind's letter and 16 hex of it.

    Version 2 (every artifact stored since): for each file, in the order of its relative path's bytes, the
    path's length (8 bytes, big-endian), the path ('/'-separated) and the sha256 of its bytes. Every part has
    a known length, so two different sets of files never give the same sequence. Version 1 (artifacts stored
    before; their row's ``hash_version`` is NULL): each path, NUL, its bytes, NUL: a file ``a`` holding
    ``X\\0b\\0Y`` hashed like two files ``a`` = ``X`` and ``b`` = ``Y``. Kept only to verify the artifacts it
    named."""
    files = [p for p in path.rglob("*") if p.is_file()]
    h = hashlib.sha256()
    if version == 1:
        for f in sorted(files):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
            h.update(b"\0")
        return h.hexdigest()
    if version != 2:
        raise ValueError(f"unknown hash_dir version {version}")
    for rel, f in sorted((os.fsencode(f.relative_to(path).as_posix()), f) for f in files):
        h.update(len(rel).to_bytes(8, "big") + rel + _file_sha256(f))
    return h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _git(*args: str) -> str:
    try:
        r = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
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
    input_steps: list[str | None] | None = None


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
        path = self.store.own_tmp / f"{_proc_tag()}.{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        self._outputs[role] = (kind, name, path, dict(meta or {}))
        return path

    def set_meta(self, role: str, **meta: Any) -> None:
        self._outputs[role][3].update(meta)

    @property
    def scratch(self) -> Path:
        """A per-step directory that survives a kill (for checkpoints); removed when the step ends. Only the
        process holding the step's lock (``Store.run_step``) uses it, so concurrent runs cannot clobber its
        checkpoints."""
        p = self.store.home / "scratch" / self.key[:24]
        p.mkdir(parents=True, exist_ok=True)
        return p


class Store:
    """``Store()`` opens HEREDITY_HOME (default ~/.local/share/heredity) and HEREDITY_DB_URL (default
    SQLite)."""

    def __init__(self, home: str | Path | None = None, db_url: str | None = None):
        self.home = Path(home).expanduser() if home else default_home()
        self.artifacts_dir = self.home / "artifacts"
        self.tmp_dir = self.home / "tmp"
        try:
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HeredityError(
                f"cannot create the store at {self.home}: {e.strerror}; set HEREDITY_HOME to a writable "
                "directory"
            ) from e
        self.db_url = db_url or os.environ.get("HEREDITY_DB_URL") or f"sqlite:///{self.home / 'heredity.db'}"
        self.engine = make_engine(self.db_url)
        try:
            with self.step_lock(
                "0" * 64, "create the store's tables"
            ):  # two processes opening a new store at once
                Base.metadata.create_all(self.engine)
                add_missing_columns(self.engine)
        except (OperationalError, SQLAlchemyError) as e:
            reason = (
                str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            )
            raise HeredityError(
                f"cannot reach the database {redact(self.db_url)} ({reason}); "
                "check HEREDITY_DB_URL, or unset it to use the SQLite file in HEREDITY_HOME"
            ) from e
        self.own_tmp = self.tmp_dir / _HOST_DIR
        self._backfill_producers()
        self._clean_tmp()
        self._producer: dict[
            str, str
        ] = {}  # artifact id -> the step that returned it in this process (lineage paths)
        self._verified: set[str] = set()  # artifacts checked on load in this process
        # `heredity run NAME --recompute OP`: steps of these ops ignore their memoized result, and so does
        # every step that consumes an output recomputed in this session (``_fresh``)
        self.recompute: set[str] = set()
        self._fresh: set[str] = set()
        self.check_keys = os.environ.get("HEREDITY_CHECK_KEYS", "") not in ("", "0")

    def __repr__(self) -> str:
        return f"Store(home={str(self.home)!r}, db={redact(self.db_url)!r})"

    # ---- housekeeping -------------------------------------------------------------------------
    def _clean_tmp(self) -> None:
        """Remove temporary output dirs left by processes of this host that no longer run (killed steps).

        Another host's dirs are never touched: on a shared filesystem its PIDs mean nothing here. A PID that
        is alive but started at another time is a reused PID, so its dir is a dead process's too. Dirs of the
        layout before hosts were recorded (``tmp/<pid>-<random>``) are removed only when a day old and their
        PID is not alive."""
        if self.own_tmp.is_dir():
            for p in self.own_tmp.iterdir():
                pid, _, rest = p.name.partition(".")
                start = rest.partition(".")[0]
                if pid.isdigit() and not _same_process(int(pid), start):
                    shutil.rmtree(p, ignore_errors=True)
        now = datetime.now().timestamp()
        for p in self.tmp_dir.iterdir():
            if (m := _LEGACY_TMP.match(p.name)) and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > 86400:
                        shutil.rmtree(p, ignore_errors=True)

    def _backfill_producers(self) -> None:
        """Stores made before ``artifact_steps`` existed: each artifact's first step becomes its recorded
        producer."""
        with Session(self.engine) as s:
            if s.scalars(select(ArtifactStepRow.artifact_id).limit(1)).first() is not None:
                return
            rows = s.execute(select(ArtifactRow.id, ArtifactRow.step_key, ArtifactRow.created_at)).all()
            if not rows:
                return
            s.add_all(ArtifactStepRow(artifact_id=a, step_key=k, made_at=t) for a, k, t in rows)
            with contextlib.suppress(IntegrityError):  # another process backfilled at the same moment
                s.commit()

    @contextlib.contextmanager
    def step_lock(self, key: str, op: str = ""):
        """Hold the lock of step ``key``: blocks while another process (any host on a PostgreSQL store) holds
        it.

        PostgreSQL: a session advisory lock, released by the server if the process dies. SQLite: ``flock`` on
        a file beside the database (the database is local to one filesystem), released by the kernel if the
        process dies.
        """
        if self.engine.dialect.name == "postgresql":
            lock_id = int(key[:15], 16)  # 60 bits: a positive bigint
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar():
                    _waiting(op, key)
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
            return
        locks = self.home / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{key[:32]}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _waiting(op, key)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

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
        distributed = is_distributed(op) and world_size() > 1
        if distributed:  # a data-parallel run: its global batch, hence its output, depends on the world size
            cfg = {"config": cfg, "world_size": world_size()}
        key = step_key(op, cfg, inputs, seed)
        if fn is not None and self.check_keys and op_version(op) is not None:  # heredity's own ops
            check_key_covers(fn, op, cfg, inputs, seed)
        force = fn is not None and (op in self.recompute or any(i in self._fresh for i in inputs))
        hit = None if force else self._cached(key)
        group = _process_group()  # the ranks of an initialized torch.distributed job, else None
        if group is not None:  # every rank must take the same path, or one waits forever in a collective
            hit = hit if not _any_rank(group, hit is None) else None
        if hit:
            return hit
        if fn is None:
            raise HeredityError(f"step {op} has not run yet and no function was given to run it")
        if group is not None and not distributed:
            return self._on_rank0(group, op, cfg, inputs, seed, key, fn, force)
        # A distributed op (every process of an `accelerate launch` trains together) runs on every rank, but
        # only rank 0 commits: it holds the step's lock from before training until its commit, so another
        # rank, done training, takes the lock only once rank 0's outputs are in the store and returns those
        # (libraries such as transformers write weights on the main process only; a rank's own output dir is
        # discarded). Any other op outside a process group is computed by one process while the others wait on
        # the lock, then reuse it.
        rank = int(os.environ.get("RANK", "0") or 0) if distributed else 0
        lock = contextlib.nullcontext() if rank else self.step_lock(key, op)
        with lock:
            if not force and not distributed and (hit := self._cached(key)):  # computed while we waited
                return hit
            outputs, metrics = self._compute(op, cfg, inputs, seed, key, fn, commit=not rank)
        if rank:
            outputs, metrics = self._rank0_result(op, key)
        if force:
            self._fresh.update(outputs.values())
        self._producer.update(dict.fromkeys(outputs.values(), key))
        return StepResult(key, outputs, metrics, cached=False)

    def _compute(self, op, cfg, inputs, seed, key, fn, commit: bool = True) -> tuple[dict, dict]:
        ctx = StepContext(self, key, op, cfg, inputs, seed)
        started = _now()
        try:
            metrics = fn(ctx) or {}
        except BaseException:
            for _, _, path, _ in ctx._outputs.values():
                shutil.rmtree(path, ignore_errors=True)
            raise
        ctx.metrics = finite_json(json.loads(canonical({**ctx.metrics, **metrics})))  # strict JSON, once
        if not commit:
            for _, _, path, _ in ctx._outputs.values():
                shutil.rmtree(path, ignore_errors=True)
            return {}, {}
        outputs = self._commit(ctx, started)
        shutil.rmtree(self.home / "scratch" / key[:24], ignore_errors=True)
        return outputs, dict(ctx.metrics)

    def _rank0_result(self, op: str, key: str) -> tuple[dict, dict]:
        with self.step_lock(key, op):  # free once rank 0 committed
            done = self.find_step(key)
        if done is None:
            raise HeredityError(
                f"step {op} ({key[:16]}): rank 0 of this launch did not store its outputs; see its log"
            )
        return dict(done.outputs), dict(done.metrics)

    def _on_rank0(self, group, op, cfg, inputs, seed, key, fn, force) -> StepResult:
        """A one-process op inside a process group: rank 0 computes it (libraries write files on rank 0 only,
        e.g. transformers' ``save_pretrained``), the other ranks wait on the step lock and return its result.
        Rank 0 takes the lock before a barrier, so no other rank can take it first; the wait on the lock has
        no timeout."""
        if group.get_rank() == 0:
            with self.step_lock(key, op):
                hit = None if force else self._cached(key)  # another job computed it while we waited
                group.barrier()
                if hit:
                    return hit
                outputs, metrics = self._compute(op, cfg, inputs, seed, key, fn)
        else:
            group.barrier()
            outputs, metrics = self._rank0_result(op, key)
        if force:
            self._fresh.update(outputs.values())
        self._producer.update(dict.fromkeys(outputs.values(), key))
        return StepResult(key, outputs, metrics, cached=group.get_rank() != 0)

    def _cached(self, key: str) -> StepResult | None:
        done = self.find_step(key)
        if done and all((self.artifacts_dir / a).is_dir() for a in done.outputs.values()):
            self._producer.update(dict.fromkeys(done.outputs.values(), key))
            return StepResult(key, dict(done.outputs), dict(done.metrics), cached=True)
        return None

    def _content_id(self, kind: str, path: Path, was: str | None) -> tuple[str, int]:
        """(artifact id, hash version) of the output directory ``path``.

        The id comes from the current ``hash_dir``, except when this step's recorded output for the role
        (``was``) was stored under an older hash version and these bytes hash to it under that version: then
        the old id is kept (a step recomputed after ``fsck --repair`` puts its output back where every later
        step expects it)."""
        aid = f"{KIND_PREFIX[kind]}-{hash_dir(path)[:16]}"
        if was and was != aid and was[0] == KIND_PREFIX[kind]:
            with Session(self.engine) as s:
                row = s.get(ArtifactRow, was)
                old = (row.hash_version or 1) if row is not None else HASH_VERSION
            if old != HASH_VERSION and hash_dir(path, old)[:16] == was.split("-", 1)[1]:
                return was, old
        return aid, HASH_VERSION

    def _commit(self, ctx: StepContext, started: datetime) -> dict[str, str]:
        """Place the step's outputs under their content ids and record the step, its artifacts and their
        producers.

        Race-safe: another process (another step) storing the same bytes at the same moment may place the
        directory or insert the artifact row first; this process then uses what it placed. A transaction that
        collides with such a row (an IntegrityError) is rolled back and run again, seeing the other's
        committed row."""
        previous = self.find_step(ctx.key)
        placed: dict[str, tuple[str, str, str, dict, int, dict, bool, int]] = {}
        for role, (kind, name, path, meta) in ctx._outputs.items():
            aid, version = self._content_id(kind, path, previous.outputs.get(role) if previous else None)
            size = dir_size(path)
            final = self.artifacts_dir / aid
            placed_here = False
            if final.is_dir():
                shutil.rmtree(path)  # same content already stored
            else:
                try:
                    os.rename(path, final)
                    placed_here = True
                except OSError:  # a concurrent writer placed it first
                    if not final.is_dir():
                        raise
                    shutil.rmtree(path, ignore_errors=True)
            placed[role] = (aid, kind, name, dict(meta), size, verify.manifest(final), placed_here, version)
        outputs = {role: v[0] for role, v in placed.items()}
        now = _now()
        input_steps = [self._producer.get(i) or self._only_producer(i) for i in ctx.inputs]
        attempts = 5
        for attempt in range(attempts):
            try:
                self._record(ctx, started, now, outputs, input_steps, placed)
                return outputs
            except (
                IntegrityError
            ):  # a row another process inserted at the same moment: visible once it committed
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return outputs

    def _record(
        self,
        ctx: StepContext,
        started: datetime,
        now: datetime,
        outputs: dict[str, str],
        input_steps: list[str | None],
        placed: dict,
    ) -> None:
        """One transaction: the step row, a row for each new artifact and a producer row for each output."""
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
                    input_steps=input_steps,
                )
            )
            s.flush()
            linked: set[str] = set()
            for aid, kind, name, meta, size, files, placed_here, version in placed.values():
                row = s.get(ArtifactRow, aid)
                if row is None:
                    s.add(
                        ArtifactRow(
                            id=aid,
                            kind=kind,
                            name=name,
                            step_key=ctx.key,
                            meta=meta,
                            size_bytes=size,
                            created_at=now,
                            files=files,
                            verified_at=None,
                            hash_version=version,
                        )
                    )
                    s.flush()
                elif placed_here:  # files restored after `heredity fsck --repair` removed a broken copy
                    row.files, row.verified_at = files, None
                if aid not in linked and s.get(ArtifactStepRow, (aid, ctx.key)) is None:
                    s.add(ArtifactStepRow(artifact_id=aid, step_key=ctx.key, made_at=now))
                linked.add(aid)
            s.commit()

    # ---- artifacts --------------------------------------------------------------------------
    def resolve_id(self, ref: str) -> str:
        """A full artifact id from an id or a unique id prefix (``m-3fa2``)."""
        ref = str(ref).strip()
        if not ID_PREFIX_RE.match(ref) and (target := self.model_alias(ref)) is not None:
            return target
        if not ID_PREFIX_RE.match(ref):
            raise HeredityError(
                f"{ref!r} is not an artifact id (expected like m-0123456789abcdef); "
                "list ids with `heredity ls`"
            )
        with Session(self.engine) as s:
            if ID_RE.match(ref):
                if s.get(ArtifactRow, ref) is not None:
                    return ref
                matches = []
            else:
                matches = s.scalars(
                    select(ArtifactRow.id).where(ArtifactRow.id.startswith(ref)).limit(2)
                ).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise HeredityError(f"artifact prefix {ref!r} is ambiguous; give more characters of the id")
        raise HeredityError(f"no artifact {ref!r} in the store at {self.home}; list ids with `heredity ls`")

    def get(self, ref: str, verify_files: bool = True) -> Artifact:
        """The artifact ``ref``, its files checked (``check``) unless ``verify_files`` is False."""
        aid = self.resolve_id(ref)
        with Session(self.engine) as s:
            row = s.get(ArtifactRow, aid)
            art = _artifact(row, self.artifacts_dir)
        if not art.path.is_dir():
            raise HeredityError(
                f"artifact {aid} is recorded but its files are missing from {art.path}; rerun the step "
                f"that made it (`heredity fsck {aid}` says which)"
            )
        if verify_files and aid not in self._verified:
            problems = self.check(aid)
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            if problems and all(STORED_SO in p for p in problems):
                raise CorruptArtifactError(
                    f"artifact {aid} holds a malformed file: "
                    f"{problems[0].replace(' ' + STORED_SO, '')}{more}; it was stored so (its bytes match "
                    "its id): recreate it from a good source"
                )
            if problems:
                raise CorruptArtifactError(
                    f"artifact {aid} is corrupt: {problems[0]}{more}; "
                    f"run `heredity fsck {aid}` (then `--repair` to remove it and recompute)"
                )
            self._verified.add(aid)
        return art

    def check(self, ref: str, full: bool | None = None) -> list[str]:
        """What is wrong with an artifact's files (empty: nothing).

        Always: every recorded file present with its recorded size, each safetensors header well formed, no
        file added. A full re-hash against the id when ``full``, when a file's mtime changed since it was
        stored or last verified, on the first load after the artifact was written, or when HEREDITY_VERIFY=1.
        A re-hash that matches records the files' current metadata, so the next load is cheap again. The
        re-hash uses the ``hash_dir`` version the artifact's id was made with, so artifacts stored before
        version 2 still verify."""
        aid = self.resolve_id(ref)
        path = self.artifacts_dir / aid
        if not path.is_dir():
            return [f"its directory {path} is missing"]
        with Session(self.engine) as s:
            row = s.get(ArtifactRow, aid)
            recorded, verified_at, version = row.files, row.verified_at, row.hash_version or 1
        if recorded is None:  # stored before manifests: a full hash decides, then the manifest is recorded
            problems, changed = [], True
        else:
            problems, changed = verify.quick_problems(path, recorded)
        if problems:
            header_only = not any(
                ": missing" in p or "bytes, stored" in p or "not part of" in p for p in problems
            )
            if (
                header_only and hash_dir(path, version)[:16] == aid.split("-", 1)[1]
            ):  # bad, but as it was stored
                return [f"{p} {STORED_SO}" for p in problems]
            return problems
        if full is None:
            full = changed or verified_at is None or os.environ.get("HEREDITY_VERIFY", "") not in ("", "0")
        if not full:
            return []
        got = hash_dir(path, version)[
            :16
        ]  # the hash the id was made with (an artifact stored before: version 1)
        if got != aid.split("-", 1)[1]:
            return [f"its files hash to {got}, not to its id (a byte changed since it was stored)"]
        with Session(self.engine) as s:
            row = s.get(ArtifactRow, aid)
            row.files, row.verified_at = verify.manifest(path), _now()
            s.commit()
        return []

    def fsck(
        self,
        refs: Iterable[str] = (),
        repair: bool = False,
        progress: Callable[[str], None] | None = None,
        stale_after: float = STALE_SECONDS,
    ) -> dict:
        """Re-hash artifacts (all when ``refs`` is empty) and check that every step's outputs exist; on a
        whole-store check (no ``refs``) also find what killed processes left behind.

        Returns {"checked": n, "broken": {id: [problems]}, "removed": [ids],
        "recompute": {id: [(op, step key)]}, "orphans": [ids], "stale_tmp": [paths], "stale_scratch": [paths],
        "cleaned": [paths]} (paths relative to the store's home). ``repair`` removes only the files of
        artifacts whose bytes provably differ from their id (or whose recorded files are missing): the row
        stays, so the next run of a step that made it recomputes it and puts it back. What else it removes,
        and when each counts as left behind:

        * orphans: directories under ``artifacts/`` no row names (a kill between the rename and the database
          commit), untouched for ``stale_after`` seconds (a commit in flight is never one);
        * stale tmp: output directories of a step that never finished: this host's once their process is gone;
          another host's (whose processes cannot be asked) once nothing under them changed for a day, or for
          ``stale_after`` if longer;
        * stale scratch: a step's checkpoint directory whose step lock is free (no process runs the step),
          when the step finished (a kill before its cleanup) or nothing under it changed for ``stale_after``
          seconds: the resume checkpoints of a killed step, which a rerun would otherwise continue from.

        Each is moved out atomically, then deleted; ``cleaned`` lists what was."""
        ids = [self.resolve_id(r) for r in refs] if refs else [a.id for a in self.list()]
        broken: dict[str, list[str]] = {}
        for aid in ids:
            if progress:
                progress(aid)
            problems = self.check(aid, full=True)
            if problems:
                broken[aid] = problems
        removed = []
        if repair:
            for aid, problems in broken.items():
                if all(STORED_SO in p for p in problems):
                    continue  # not a storage fault: recomputing would store the same bad bytes again
                path = self.artifacts_dir / aid
                if path.is_dir() and self._discard(path):  # atomic: no half-removed artifact is ever visible
                    removed.append(aid)
                self._verified.discard(aid)
        recompute = {aid: [(st.op, st.key[:16]) for st in self.producers(aid)] for aid in broken}
        res = {
            "checked": len(ids),
            "broken": broken,
            "removed": removed,
            "recompute": recompute,
            "orphans": [],
            "stale_tmp": [],
            "stale_scratch": [],
            "cleaned": [],
        }
        if refs:
            return res
        rel = lambda q: q.relative_to(self.home).as_posix()  # noqa: E731
        for aid in self._orphans(stale_after):
            res["orphans"].append(aid)
            if repair and self._remove_orphan(aid):
                res["cleaned"].append(rel(self.artifacts_dir / aid))
        for q in self._stale_tmp(stale_after):
            res["stale_tmp"].append(rel(q))
            if repair and self._discard(q):
                res["cleaned"].append(rel(q))
        for q, gone in self._stale_scratch(stale_after, remove=repair):
            res["stale_scratch"].append(rel(q))
            if gone:
                res["cleaned"].append(rel(q))
        return res

    def _to_trash(self, path: Path, gone: type[OSError]) -> Path | None:
        """Rename ``path`` into this process's tmp (atomic, so no reader sees it half removed); None when the
        rename fails with ``gone``."""
        trash = self.own_tmp / f"{_proc_tag()}.fsck-{uuid.uuid4().hex[:8]}-{path.name}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, trash)
        except gone:
            return None
        return trash

    def _discard(self, path: Path) -> bool:
        """Remove ``path``: first renamed into this process's tmp (atomic), then deleted. False when it was
        gone already (another process cleaned it first)."""
        trash = self._to_trash(path, FileNotFoundError)
        if trash is None:
            return False
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
        return True

    def _orphans(self, stale_after: float) -> list[str]:
        """Artifact directories no row names, untouched (mtime and ctime: a rename sets ctime) for
        ``stale_after``."""
        if not self.artifacts_dir.is_dir():
            return []
        names = [
            p.name for p in self.artifacts_dir.iterdir() if ID_RE.match(p.name) and p.is_dir()
        ]  # before the rows
        with Session(self.engine) as s:
            known = set(s.scalars(select(ArtifactRow.id)))
        now = time.time()
        return sorted(
            n for n in names if n not in known and _moved_ago(self.artifacts_dir / n, now) >= stale_after
        )

    def _remove_orphan(self, aid: str) -> bool:
        """Move the orphan out, then delete it unless a row for it was committed meanwhile (then it goes
        back)."""
        path = self.artifacts_dir / aid
        trash = self._to_trash(path, OSError)
        if trash is None:
            return False
        with Session(self.engine) as s:
            adopted = s.get(ArtifactRow, aid) is not None
        if adopted:  # a step storing the same bytes recorded it just now
            with contextlib.suppress(OSError):
                os.rename(trash, path)
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _stale_tmp(self, stale_after: float) -> list[Path]:
        """Temporary output directories of steps that will never finish (see ``fsck``)."""
        out: list[Path] = []
        now, foreign = time.time(), max(stale_after, FOREIGN_TMP_SECONDS)
        for entry in sorted(self.tmp_dir.iterdir()) if self.tmp_dir.is_dir() else []:
            if entry == self.own_tmp:
                for p in sorted(entry.iterdir()):
                    pid, _, rest = p.name.partition(".")
                    if pid.isdigit():
                        if not _same_process(int(pid), rest.partition(".")[0]):
                            out.append(p)
                    elif _idle(p, now) >= foreign:
                        out.append(p)
            elif m := _LEGACY_TMP.match(
                entry.name
            ):  # tmp/<pid>-<random>: the layout before hosts were recorded
                if not _pid_alive(int(m.group(1))) and _idle(entry, now) >= foreign:
                    out.append(entry)
            elif entry.is_dir():  # another host's
                out += [p for p in sorted(entry.iterdir()) if _idle(p, now) >= foreign]
        return out

    def _stale_scratch(self, stale_after: float, remove: bool) -> list[tuple[Path, bool]]:
        """(scratch directory left behind, whether it was removed): checked, and removed, holding its step's
        lock."""
        root = self.home / "scratch"
        out: list[tuple[Path, bool]] = []
        for p in sorted(root.iterdir()) if root.is_dir() else []:
            if not re.fullmatch(r"[0-9a-f]{24}", p.name) or not p.is_dir():
                continue
            with self._try_step_lock(p.name) as free:
                if not free:
                    continue  # its step is running
                with Session(self.engine) as s:
                    finished = s.scalars(
                        select(StepRow.key).where(StepRow.key.startswith(p.name)).limit(1)
                    ).first()
                if finished is None and _idle(p, time.time()) < stale_after:
                    continue
                out.append((p, remove and self._discard(p)))
        return out

    @contextlib.contextmanager
    def _try_step_lock(self, prefix: str):
        """Take, without waiting, the lock of the step(s) whose key starts with ``prefix`` (at least 15 hex);
        yields whether it was free (then it is held until the block ends)."""
        if self.engine.dialect.name == "postgresql":
            lock_id = int(prefix[:15], 16)  # as ``step_lock``
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar())
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
            return
        with contextlib.ExitStack() as stack:
            free = True
            for f in sorted((self.home / "locks").glob(f"{prefix}*.lock")):
                fh = stack.enter_context(open(f, "a+"))  # noqa: SIM115 - closed by the stack
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    free = False
                    break
                stack.callback(fcntl.flock, fh, fcntl.LOCK_UN)
            yield free

    # ---- model aliases (``heredity.loop`` moves them; resolved here, so every command takes one) ----------
    def model_alias(self, name: str) -> str | None:
        """The model or adapter id the model alias ``name`` points to now; None when no such alias."""
        with Session(self.engine) as s:
            row = s.get(ModelAliasRow, str(name).strip())
            return row.artifact_id if row else None

    # ---- prompt templates (``heredity.prompts`` writes them; resolved here, so any layer can key on one) --
    def prompt_names(self) -> list[str]:
        """The names of the stored prompt templates, sorted."""
        with Session(self.engine) as s:
            q = select(ArtifactRow.name).where(ArtifactRow.kind == "prompt").distinct()
            return sorted(s.scalars(q))

    def prompt_versions(self, name: str) -> list[Artifact]:
        """The stored versions of prompt template ``name``, oldest first (version 1 first; empty if none).
        A version's number is its place in this list: versions are never rewritten or removed."""
        with Session(self.engine) as s:
            q = (
                select(ArtifactRow)
                .where(ArtifactRow.kind == "prompt", ArtifactRow.name == name)
                .order_by(ArtifactRow.created_at, ArtifactRow.id)
            )
            return [_artifact(r, self.artifacts_dir) for r in s.scalars(q)]

    def prompt_aliases(self, name: str) -> dict[str, str]:
        """Where each alias of prompt template ``name`` points now: {alias: prompt id}, sorted by alias."""
        with Session(self.engine) as s:
            q = select(PromptAliasRow).where(PromptAliasRow.name == name).order_by(PromptAliasRow.alias)
            return {r.alias: r.artifact_id for r in s.scalars(q)}

    def resolve_prompt(self, ref: str) -> str:
        """The prompt id (``p-``) that ``ref`` names: an id or unique id prefix, ``NAME`` (its latest
        version), ``NAME:N`` (version N, from 1), ``NAME@ALIAS`` (``NAME@latest``: the latest version), or
        MLflow's URI forms ``prompts:/NAME/N`` and ``prompts:/NAME@ALIAS``. Anything else is a one-line error
        listing what exists."""
        raw = str(ref).strip()
        if ID_PREFIX_RE.match(raw):
            aid = self.resolve_id(raw)
            with Session(self.engine) as s:
                kind = s.get(ArtifactRow, aid).kind
            if kind != "prompt":
                raise HeredityError(f"{aid} is a {kind}, not a prompt template; give {PROMPT_REFS}")
            return aid
        sep = "/" if raw.startswith("prompts:/") else ":"  # MLflow's URI numbers a version after a '/'
        m = re.fullmatch(
            rf"(?P<name>{PROMPT_NAME})(?:{sep}(?P<version>[0-9]+)|@(?P<alias>{PROMPT_ALIAS}))?",
            raw.removeprefix("prompts:/"),
        )
        if not m:
            raise HeredityError(f"{raw!r} is not a prompt reference; write {PROMPT_REFS}")
        name, version, alias = m["name"], m["version"], m["alias"]
        versions = self.prompt_versions(name)
        if not versions:
            names = self.prompt_names()
            have = f"the store holds {', '.join(names)}" if names else "the store holds no prompt template"
            raise HeredityError(
                f"no prompt template named {name!r}; {have} (create one with `heredity prompt create`)"
            )
        if version is not None:
            n = int(version)
            if not 1 <= n <= len(versions):
                raise HeredityError(
                    f"prompt {name} has no version {n}; it has versions 1 to {len(versions)} "
                    f"(`heredity prompt show {name}` shows the latest)"
                )
            return versions[n - 1].id
        if alias is not None and alias != "latest":
            aliases = self.prompt_aliases(name)
            if alias not in aliases:
                have = f"its aliases are {', '.join(aliases)}" if aliases else "it has no alias"
                raise HeredityError(
                    f"prompt {name} has no alias {alias!r}; {have} "
                    f"(set one with `heredity prompt alias {name} {alias} VERSION`)"
                )
            return aliases[alias]
        return versions[-1].id

    def path(self, ref: str) -> Path:
        return self.get(ref).path

    def list(self, kind: str | None = None) -> list[Artifact]:
        with Session(self.engine) as s:
            q = select(ArtifactRow).order_by(ArtifactRow.created_at)
            if kind:
                q = q.where(ArtifactRow.kind == kind)
            return [_artifact(r, self.artifacts_dir) for r in s.scalars(q)]

    def producers(self, ref: str) -> list[Step]:
        """Every step that made this artifact (byte-identical outputs of different steps), oldest first."""
        aid = self.resolve_id(ref)
        with Session(self.engine) as s:
            keys = s.scalars(
                select(ArtifactStepRow.step_key)
                .where(ArtifactStepRow.artifact_id == aid)
                .order_by(ArtifactStepRow.made_at)
            ).all()
            if not keys:
                row = s.get(ArtifactRow, aid)
                keys = [row.step_key] if row else []
        return [st for k in keys if (st := self.find_step(k)) is not None]

    def _only_producer(self, aid: str) -> str | None:
        keys = [st.key for st in self.producers(aid)]
        return keys[0] if len(keys) == 1 else None

    def step_of(self, ref: str, step: str | None = None) -> Step:
        """The step that made ``ref``: the one whose key starts with ``step`` if given, else the latest
        producer."""
        art = self.get(ref, verify_files=False)
        found = self.producers(art.id)
        if step:
            found = [st for st in found if st.key.startswith(step)]
            if not found:
                raise HeredityError(
                    f"no step {step!r} made {art.id}; `heredity show {art.id}` lists the steps that did"
                )
        assert found, f"artifact {art.id} has no step row"
        return found[-1]

    def children(self, ref: str) -> list[Artifact]:
        """Artifacts made by steps that took ``ref`` as an input."""
        aid = self.resolve_id(ref)
        with Session(self.engine) as s:
            steps = [r for r in s.scalars(select(StepRow)) if aid in (r.inputs or [])]
            ids = {a for r in steps for a in r.outputs.values()}
            rows = [s.get(ArtifactRow, i) for i in sorted(ids)]
            return [_artifact(r, self.artifacts_dir) for r in rows if r is not None]

    def lineage(self, ref: str, step: str | None = None) -> dict:
        """The ancestry of an artifact as a nested dict: artifact -> step -> input artifacts -> ...

        An artifact several steps made (identical bytes) shows the step on the path being traced: for the
        artifact asked about, ``step`` (a key prefix) or its latest producer; for an input, the producer the
        consuming step recorded when it ran. ``also_made_by`` lists the other producers."""
        seen: dict[tuple[str, str | None], dict] = {}

        def node(aid: str, via: str | None) -> dict:
            if (aid, via) in seen:
                return {
                    "id": aid,
                    "kind": seen[aid, via]["kind"],
                    "name": seen[aid, via]["name"],
                    "see_above": True,
                }
            art = self.get(aid, verify_files=False)
            makers = self.producers(aid)
            chosen = [st for st in makers if via and st.key.startswith(via)]
            step = chosen[-1] if chosen else (makers[-1] if makers else None)
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
                "also_made_by": [
                    {"op": st.op, "key": st.key[:16]} for st in makers if step and st.key != step.key
                ],
            }
            seen[aid, via] = n
            via_inputs = (step.input_steps or [None] * len(step.inputs)) if step else []
            n["parents"] = [node(i, v) for i, v in zip(step.inputs if step else [], via_inputs, strict=False)]
            return n

        aid = self.resolve_id(ref)
        if step:
            self.step_of(aid, step)  # a clear error for a step that did not make it
        return node(aid, step)


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _who() -> str:
    """``user@host`` for a record of who moved an alias (the store's prompt and model aliases)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:255]


def _idle(path: Path, now: float) -> float:
    """Seconds since anything at or under ``path`` was written (the newest mtime of the tree); 0 if
    unreadable."""
    try:
        newest = path.lstat().st_mtime
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                for name in dirnames + filenames:
                    with contextlib.suppress(OSError):
                        newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    except OSError:
        return 0.0
    return now - newest


def _moved_ago(path: Path, now: float) -> float:
    """Seconds since ``path`` itself was written or renamed (its mtime and ctime: a rename sets ctime)."""
    try:
        st = path.lstat()
    except OSError:
        return 0.0
    return now - max(st.st_mtime, st.st_ctime)


STORED_SO = "(stored so: its bytes match its id, so the step or import that made it wrote this file)"


class CorruptArtifactError(HeredityError):
    """An artifact's files differ from what the store recorded (see ``Store.check``)."""


def _proc_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _same_process(pid: int, start: str) -> bool:
    """Whether ``pid`` is alive and is the process that started at ``start`` (not a reused PID)."""
    if not _pid_alive(pid):
        return False
    now = _proc_start(pid)
    return not (start and now and now != start)


_HOST_DIR = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
_LEGACY_TMP = re.compile(r"^(\d+)-[0-9a-f]{32}$")


def _proc_tag() -> str:
    """``<pid>.<start>`` of this process: who owns a tmp dir (computed each time: a forked child is another
    owner)."""
    pid = os.getpid()
    return f"{pid}.{_proc_start(pid) or 0}"


def _waiting(op: str, key: str) -> None:
    print(
        f"step {op or '?'} ({key[:16]}) is being computed by another process; waiting for it", file=sys.stderr
    )


def _process_group():
    """``torch.distributed`` when this process is one rank of an initialized group of more than one, else
    None."""
    if "torch" not in sys.modules:  # nothing has imported torch: no process group can exist
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _any_rank(dist, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (an all-reduce: every rank must call it)."""
    import torch

    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _artifact(row: ArtifactRow, root: Path) -> Artifact:
    return Artifact(
        row.id,
        row.kind,
        row.name,
        root / row.id,
        row.step_key,
        row.meta or {},
        row.size_bytes,
        row.created_at,
    )


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
        row.input_steps,
    )
