"""Paired datasets: a treatment and its controls cut to the very same prompts.

A control must differ from the treatment in one thing only. When each arm's rows are filtered on their own
(a strict format filter, a length cap), the arms keep different prompt subsets, and a difference between
students trained on them could come from the prompts. ``paired_rows`` keeps, for every arm, only the rows
whose prompt passed in *every* arm, in one common order, cut to the same count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


def paired_rows(
    arms: Mapping[str, Sequence[dict]],
    keep: Callable[[dict], bool],
    key: str = "prompt_index",
    limit: int | None = None,
) -> tuple[dict[str, list[dict]], dict]:
    """``({arm: rows}, stats)``: the rows of every arm whose ``key`` occurs exactly once in each arm and
    passes ``keep`` in all of them, ordered by first appearance in the first arm and cut to ``limit``.

    ``stats`` counts ``passed`` per arm (before pairing), ``common`` (passed in all arms) and ``rows_out``.
    """
    if not arms:
        raise ValueError("paired_rows needs at least one arm")
    by_key: dict[str, dict] = {}
    passed: dict[str, int] = {}
    for arm, rows in arms.items():
        seen: dict = {}
        for r in rows:
            if key not in r:
                raise ValueError(f"arm {arm!r}: a row has no {key!r} column to pair on")
            if r[key] in seen:
                raise ValueError(f"arm {arm!r}: {key} {r[key]!r} occurs twice; pair on a unique column")
            seen[r[key]] = r
        by_key[arm] = seen
        passed[arm] = sum(1 for r in rows if keep(r))
    first = next(iter(arms))
    order = [r[key] for r in arms[first]]
    common = [k for k in order if all(k in by_key[a] and keep(by_key[a][k]) for a in arms)]
    chosen = common if limit is None else common[:limit]
    out = {arm: [by_key[arm][k] for k in chosen] for arm in arms}
    return out, {"passed": passed, "common": len(common), "rows_out": len(chosen)}
