"""Experiments: ``heredity run NAME --preset quick|long|paper [--set key=value ...]``.

An experiment is one module in this package: a pydantic ``Config`` (its ``presets()`` classmethod returns
{preset name: Config}) and a ``run(store, config) -> dict`` decorated with
``@experiment(NAME, question=...)``. That decorator is the registration: ``REGISTRY`` is found by reading the
package's modules (their syntax, not their code), so listing experiments imports none of them and
``get(NAME)`` imports only the one asked for. A module without the decorator (an experiment's
``NAME_render.py``, which renders its report) is no experiment.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path


def experiment(name: str, question: str) -> Callable:
    """Register the decorated ``run`` as experiment ``name``; ``question`` is the one line
    ``heredity run --list`` and the docs show. The function is returned unchanged (its module is found by
    ``discover``)."""

    def mark(run: Callable) -> Callable:
        run.experiment = {"name": name, "question": question}
        return run

    return mark


def _declared(path: Path) -> tuple[str, str] | None:
    """The (name, question) of the ``@experiment(...)`` in a module's source, if it has one."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                if (
                    isinstance(d, ast.Call)
                    and getattr(d.func, "id", getattr(d.func, "attr", None)) == "experiment"
                ):
                    args = [a.value for a in d.args if isinstance(a, ast.Constant)]
                    kw = {k.arg: k.value.value for k in d.keywords if isinstance(k.value, ast.Constant)}
                    name = args[0] if args else kw.get("name")
                    if isinstance(name, str):
                        return name, kw.get("question", args[1] if len(args) > 1 else "")
    return None


def discover() -> dict[str, tuple[str, str]]:
    """{experiment name: (module path, question)} for every module of this package (every folder of its
    ``__path__``) that declares ``@experiment``."""
    found: dict[str, tuple[str, str]] = {}
    for folder in __path__:
        for path in sorted(Path(folder).glob("*.py")):
            declared = _declared(path) if path.stem != "__init__" else None
            if declared is not None:
                name, question = declared
                if name in found and found[name][0] != f"{__name__}.{path.stem}":
                    raise RuntimeError(f"experiment {name!r} is declared twice: {found[name][0]} and {path}")
                found[name] = (f"{__name__}.{path.stem}", question)
    return found


class _Registry(dict):
    """name → module path, read from the package's modules when first asked (and again with ``refresh``)."""

    def refresh(self) -> _Registry:
        self.clear()
        self.update({name: mod for name, (mod, _) in discover().items()})
        return self

    def _ensure(self):
        if not dict.__len__(self):
            self.refresh()

    def __contains__(self, k):
        self._ensure()
        return dict.__contains__(self, k)

    def __getitem__(self, k):
        self._ensure()
        return dict.__getitem__(self, k)

    def __iter__(self):
        self._ensure()
        return dict.__iter__(self)

    def __len__(self):
        self._ensure()
        return dict.__len__(self)

    def items(self):
        self._ensure()
        return dict.items(self)

    def keys(self):
        self._ensure()
        return dict.keys(self)


REGISTRY: _Registry = _Registry()


def questions() -> dict[str, str]:
    """{experiment name: its one-line question}."""
    return {name: q for name, (_, q) in discover().items()}


def get(name: str):
    """The module of experiment ``name`` (imported now); a one-line error naming the experiments otherwise."""
    from heredity.errors import HeredityError

    if name not in REGISTRY:
        REGISTRY.refresh()  # a module added since the registry was read
    if name not in REGISTRY:
        raise HeredityError(f"unknown experiment {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])
