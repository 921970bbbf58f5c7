"""Every step op heredity runs, with a semantic version that is part of the step key.

A step's key holds (op, **version**, config, inputs, seed). The config and inputs hold every parameter that
can change the output (``Store.run_step`` checks the step function's closure against them under
``HEREDITY_CHECK_KEYS=1``, which the tests set); the version holds what the config cannot: the op's code.
When an op's meaning changes — the sampler draws differently, the filter gains a rule, a grader is fixed —
its version goes up, every key of that op changes, and an existing store recomputes it (and, through the new
output ids, everything downstream) instead of returning a stale number.

Code and library versions are still *recorded* on every step without being keyed: a commit that changes no
op's meaning must not invalidate a store. To make "the meaning changed" a deliberate decision rather than a
memory, each op records the entry point of its implementation (``code``); ``implementation_digest`` hashes
their source and, transitively, the source of every heredity function, class and module constant they refer
to. ``tests/op_digests.json`` holds the digest each op had at its current version; a test fails when an op's
digest differs from the table, with the message to either bump the op's version (results can change) or
record the new digest as a pure refactor:

    python -m heredity.store.ops            # which ops changed since the table
    python -m heredity.store.ops --update   # after bumping versions here: rewrite the table

Ops register where their code is: ``@op(NAME, version)`` on the implementing function, ``rows_op(NAME)`` in
the module whose rows ``data.io.put_rows`` stores. This module imports no implementation itself; looking up a
name that is not registered yet imports every heredity module first, so a key never depends on import order.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Op:
    version: int
    code: tuple[str, ...]  # "module:qualname" entry points of the implementation
    note: str = ""
    # run by every process of an `accelerate launch` together (data parallel), so its key holds the world size
    # and no process waits for another's step lock; every other op is computed by one process while the others
    # wait
    distributed: bool = False


PUT_ROWS = ("heredity.data.io:put_rows",)  # rows made in Python: the rows' sha256 is in the key

# name → Op, filled where the code is: by ``@op`` on each implementation and ``rows_op`` beside each use of
# ``data.io.put_rows`` (listed in full once every heredity module is imported: see ``registry``)
OPS: dict[str, Op] = {}


def _register(name: str, spec: Op) -> None:
    known = OPS.get(name)
    if known is not None and known != spec:
        raise RuntimeError(
            f"op {name!r} is already registered as {known}; give {', '.join(spec.code)} another name"
        )
    OPS[name] = spec


def op(name: str, version: int, note: str = "", distributed: bool = False):
    """Register the decorated function as the implementation of op ``name`` at semantic ``version``, beside
    its code; ``note`` says what each version changed, ``distributed`` marks an op that every process of a
    launch runs together. Stack two for a function that runs two ops. Bump ``version`` when the op's results
    can change, then run ``python -m heredity.store.ops --update``.

    Registered when its module is imported; a lookup of a name not yet registered imports every heredity
    module first (``registry``), so a step's key never depends on what happened to be imported."""

    def mark(fn):
        _register(name, Op(version, (f"{fn.__module__}:{fn.__qualname__}",), note, distributed))
        return fn

    return mark


def rows_op(*names: str) -> None:
    """Register ops whose output is rows made in Python and stored by ``data.io.put_rows``: the rows' sha256
    is in their key, so their version never needs to move. Call it at the top of the module that makes the
    rows."""
    for name in names:
        _register(name, Op(1, PUT_ROWS))


def registry() -> dict[str, Op]:
    """Every op heredity knows, after importing every heredity module (where they register)."""
    _import_all()
    return OPS


def _spec(name: str) -> Op | None:
    if name.startswith("report-") and name not in OPS and "report-*" in OPS:
        return OPS["report-*"]  # a report card: no need to import every module to key it
    if name not in OPS:
        _import_all()  # registered in a module nobody has imported yet
    if name in OPS:
        return OPS[name]
    return OPS.get("report-*") if name.startswith("report-") else None


def is_distributed(op: str) -> bool:
    """Whether every process of a distributed launch runs ``op`` together (see ``Op.distributed``)."""
    spec = _spec(op)
    return spec is not None and spec.distributed


def world_size() -> int:
    """Processes in this `accelerate launch` / torchrun job (1 outside one): read from the launcher's
    environment."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def op_version(op: str) -> int | None:
    """The op's semantic version; ``None`` for an op heredity does not know (a user's own step)."""
    spec = _spec(op)
    return None if spec is None else spec.version


# ---- implementation digests (for the test and the maintainer's command) --------------------------

CONSTANT_TYPES = (str, int, float, bool, bytes, tuple, list, dict, frozenset, set, type(None))


def _stable_repr(x) -> str:
    """repr that does not depend on hash randomization (a set's order does)."""
    if isinstance(x, (set, frozenset)):
        return f"{type(x).__name__}({sorted(map(_stable_repr, x))!r})"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__}({[_stable_repr(v) for v in x]!r})"
    if isinstance(x, dict):
        return f"dict({[(_stable_repr(k), _stable_repr(v)) for k, v in x.items()]!r})"
    if callable(x):  # a function in a table: its name (its source is collected beside it), never its address
        return f"<{getattr(x, '__module__', '?')}.{getattr(x, '__qualname__', type(x).__name__)}>"
    return re.sub(r" at 0x[0-9a-f]+", "", repr(x))


def _callables_in(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _callables_in(v)
    elif isinstance(x, (list, tuple, set, frozenset)):
        for v in x:
            yield from _callables_in(v)
    elif inspect.isfunction(x) or inspect.isclass(x):
        yield x


def _resolve(entry: str):
    mod, _, qual = entry.partition(":")
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


# the step machinery itself and the error type: how a result is stored and keyed, not what it is
INFRASTRUCTURE = ("heredity.store.store", "heredity.store.db", "heredity.store.ops", "heredity.errors")


def _ours_name(module_name: str) -> bool:
    return (
        module_name == "heredity" or module_name.startswith("heredity.")
    ) and module_name not in INFRASTRUCTURE


def _ours(obj) -> bool:
    return _ours_name(getattr(obj, "__module__", None) or "")


def _ours_module(m: types.ModuleType) -> bool:
    return _ours_name(m.__name__)


def _codes(code: types.CodeType):
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _codes(c)


def _collect(obj, parts: dict[str, str], seen: set[int]) -> None:
    """Add ``obj``'s source and, transitively, that of the heredity code and constants it refers to."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if inspect.isfunction(obj):
        obj = inspect.unwrap(obj)  # decorated (torch.no_grad, functools.cache): the function underneath
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, property):
        for f in (obj.fget, obj.fset):
            if f is not None:
                _collect(f, parts, seen)
        return
    if inspect.isclass(obj):
        if not _ours(obj):
            return
        try:
            parts[f"{obj.__module__}.{obj.__qualname__}"] = inspect.getsource(obj)
        except (OSError, TypeError):
            return
        for v in vars(obj).values():
            if inspect.isfunction(v) or isinstance(v, (staticmethod, classmethod, property)):
                _collect(v, parts, seen)
        return
    if not inspect.isfunction(obj) or not _ours(obj):
        return
    try:
        parts[f"{obj.__module__}.{obj.__qualname__}"] = inspect.getsource(obj)
    except (OSError, TypeError):
        return
    g = obj.__globals__
    names = {n for c in _codes(obj.__code__) for n in c.co_names}
    modules = [g[n] for n in names if isinstance(g.get(n), types.ModuleType) and _ours_module(g[n])]
    # local imports (``from heredity.x import y`` inside a body) name their module by its dotted path
    for n in names:
        if n.startswith("heredity.") or n == "heredity":
            try:
                modules.append(importlib.import_module(n))
            except ImportError:
                pass
    for m in list(modules):  # ``from heredity.engine import fastdecode``: a module reached as an attribute
        modules += [
            sub
            for n in names
            if isinstance(sub := getattr(m, n, None), types.ModuleType) and _ours_module(sub)
        ]
    for n in sorted(names):
        targets = [g[n]] if n in g else []
        targets += [getattr(m, n) for m in modules if hasattr(m, n)]
        for t in targets:
            if isinstance(t, types.ModuleType):
                continue
            if inspect.isfunction(t) or inspect.isclass(t):
                _collect(t, parts, seen)
            elif isinstance(t, CONSTANT_TYPES) and n in g and n.isupper():
                parts.setdefault(f"{obj.__module__}.{n}", _stable_repr(t))
                for f in _callables_in(t):
                    _collect(f, parts, seen)


def code_digest(*objs) -> str:
    """sha256 over the source of ``objs`` and, transitively, of the heredity code they refer to: for a step
    whose output depends on a function passed in (a report card's renderers), so that editing it changes the
    key."""
    parts: dict[str, str] = {}
    seen: set[int] = set()
    for o in objs:
        _collect(o, parts, seen)
    h = hashlib.sha256()
    for k in sorted(parts):
        h.update(k.encode() + b"\0" + parts[k].encode() + b"\0")
    return h.hexdigest()


@functools.cache
def _import_all() -> None:
    """Import every heredity module first (once), so that what a name resolves to does not depend on import
    order: a submodule is then an attribute of its package."""
    import pkgutil

    import heredity

    for m in pkgutil.walk_packages(heredity.__path__, "heredity."):
        if m.name.startswith("heredity.server") or m.name == "heredity.cli":
            # the server and the CLI run no op; importing them pulls in uvicorn and typer for nothing
            continue
        try:
            importlib.import_module(m.name)
        except ImportError:
            pass


def implementation_digest(op: str) -> str:
    """sha256 over the sources an op's entry points reach (see the module doc)."""
    _import_all()
    spec = OPS[op]
    parts: dict[str, str] = {}
    seen: set[int] = set()
    for entry in spec.code:
        _collect(_resolve(entry), parts, seen)
    h = hashlib.sha256()
    for k in sorted(parts):
        h.update(k.encode() + b"\0" + parts[k].encode() + b"\0")
    return h.hexdigest()


DIGESTS = Path(__file__).resolve().parents[3] / "tests" / "op_digests.json"


def table() -> dict[str, dict]:
    return {
        op: {"version": spec.version, "digest": implementation_digest(op)}
        for op, spec in sorted(registry().items())
    }


def changed(recorded: dict[str, dict]) -> list[str]:
    """Lines naming each op whose implementation or version differs from ``recorded``."""
    out = []
    for op, now in table().items():
        was = recorded.get(op)
        if was is None:
            out.append(f"{op}: new op (not in the table)")
        elif now["digest"] != was["digest"] and now["version"] == was["version"]:
            out.append(
                f"{op}: implementation changed at version {now['version']} (bump the version in its "
                f"@op / rows_op at {', '.join(registry()[op].code)} if its results can change; then "
                "`python -m heredity.store.ops --update`)"
            )
        elif now["version"] != was["version"]:
            out.append(
                f"{op}: version {was['version']} → {now['version']}, table not updated "
                "(`python -m heredity.store.ops --update`)"
            )
    out += [f"{op}: in the table but no longer an op" for op in recorded if op not in registry()]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recorded = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    if "--update" in argv:
        DIGESTS.write_text(json.dumps(table(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {DIGESTS}")
        return 0
    lines = changed(recorded)
    print("\n".join(lines) if lines else "every op matches tests/op_digests.json")
    return 1 if lines else 0


if __name__ == "__main__":  # run as a script, this file is a second module: the registry lives in the first
    from heredity.store import ops as _registered

    raise SystemExit(_registered.main())
