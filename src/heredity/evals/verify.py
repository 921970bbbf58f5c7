"""Checking a model's answer to a verifiable problem, and the pass@k estimator.

``final_answer`` is strict on purpose — self-training keeps only what it verifies, so a lenient parser would
let wrong reasoning in: the completion's last non-empty line must be ``#### N`` (an integer, optionally
negative, no thousands separators), and no other line may start with ``####``. Several answers, an answer in
words, text after the answer line: no answer (None), hence not correct.

``load_checker`` turns a user's checker into ``check(problem, completion) -> bool``: ``module:function`` (a
Python callable taking the problem row and the completion) or ``regex:PATTERN`` (the pattern, with
``{answer}`` replaced by the problem's escaped ``answer``, must match the completion's whole last non-empty
line); ``checker_digest`` is what a step grading with a user's function keys besides its name (its source).
``pass_at_k`` is the unbiased estimator of Chen et al. 2021 from n samples of which c are correct.

What this module does not know: sampling, models or the store.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path

from heredity.errors import HeredityError

_ANSWER = re.compile(r"^####\s*(-?\d+)\s*$")


def final_answer(completion: str) -> int | None:
    lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
    if not lines or sum(ln.startswith("####") for ln in lines) != 1:
        return None
    m = _ANSWER.match(lines[-1])
    return int(m.group(1)) if m else None


def check(problem: dict, completion: str) -> bool:
    """The default checker: the strict final answer equals the problem's ``answer``."""
    got = final_answer(completion)
    return got is not None and got == int(problem["answer"])


def load_checker(spec: str | None) -> Callable[[dict, str], bool]:
    """``None``: ``check``; ``module:function``; or ``regex:PATTERN`` with ``{answer}`` standing for the
    answer."""
    if spec is None:
        return check
    if spec.startswith("regex:"):
        pattern = spec[len("regex:") :]
        if "{answer}" not in pattern:
            raise HeredityError(f"checker {spec!r}: a regex checker needs {{answer}} where the answer goes")

        def by_regex(problem: dict, completion: str) -> bool:
            lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
            rx = pattern.replace("{answer}", re.escape(str(problem["answer"])))
            return bool(lines) and re.fullmatch(rx, lines[-1]) is not None

        return by_regex
    f = _import_checker(spec)
    return lambda problem, completion: bool(f(problem, completion))


def _import_checker(spec: str) -> Callable:
    """The callable a ``module:function`` spec names (imported), or a one-line HeredityError."""
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise HeredityError(
            f"checker {spec!r}: write module:function (a callable taking the problem and the completion) "
            "or regex:PATTERN"
        )
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise HeredityError(
            f"checker {spec!r}: cannot import it ({type(e).__name__}: {e}); is the module on PYTHONPATH?"
        ) from e
    if not callable(f):
        raise HeredityError(f"checker {spec!r} is not callable")
    return f


def checker_digest(spec: str | None) -> str | None:
    """The sha256 of a user's ``module:function`` checker's source, for a step key: a step that grades with
    the checker keys this beside its name, so editing the checker gives a new key, never the result of the old
    one.

    ``None`` for what the spec alone fixes: the default checker, ``regex:PATTERN`` and heredity's own
    ``heredity.*`` functions (their code is versioned with the op). Otherwise the digest covers the whole file
    of the module the spec names and the file of the module that defines the callable (when it is imported
    from elsewhere), byte for byte; a checker with no source file (defined interactively) is refused, since
    nothing could tell its versions apart."""
    if spec is None or spec.startswith("regex:"):
        return None
    mod = spec.partition(":")[0]
    if mod == "heredity" or mod.startswith("heredity."):
        return None
    f = _import_checker(spec)
    owner = inspect.getmodule(f) or inspect.getmodule(type(f))  # a function, or a callable object's class
    files: list[str] = []
    for m in (importlib.import_module(mod), owner):
        path = getattr(m, "__file__", None) if m is not None else None
        if path and path not in files:
            files.append(path)
    h = hashlib.sha256()
    for path in files:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise HeredityError(
                f"checker {spec!r}: cannot read its source {path} to key the step ({e.strerror})"
            ) from e
        h.update(len(data).to_bytes(8, "big") + data)
    if not files:
        raise HeredityError(
            f"checker {spec!r} has no source file, so a step cannot key it by its code; put it in a "
            "module on PYTHONPATH"
        )
    return h.hexdigest()


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from the n is correct), c of n correct: the
    unbiased estimator 1 − C(n−c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
