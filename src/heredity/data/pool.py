"""The scored pool of data-quality: every (instruction, answer) row with the signals the selection rules read
(``data.selection``), computed once as a store step.

A pool row is ``{prompt, completion}`` plus what makes it checkable: a ``reference`` answer (the built-in
instructions of ``data.instructions``: exact match by ``tasks.grade``) and/or IFEval-style ``constraints``
(``data.constraints``). ``score_pool`` adds to every row:

* ``length``: the answer's length in characters (the "longest" rule);
* ``ifd``: its instruction-following difficulty under a small scorer model (``engine.logprobs.ifd_scores``,
  Superfiltering's perplexity ratio);
* ``correct``: the answer's first line equals the reference (None without a reference);
* ``strict`` / ``loose``: it follows every constraint, IFEval's strict and loose (None without constraints).
* ``verified``: it passes every check it has (correct and/or strict; None with neither): what the
  ``verified`` and ``noisy`` rules read.

(The reward-model score, AlpaGasus' judge, is added by the experiment, which owns the reward model.)
"""

from __future__ import annotations

from heredity.data.constraints import score_answer
from heredity.data.tasks import grade
from heredity.errors import HeredityError
from heredity.store import Store, read_table, require_columns, write_table
from heredity.store.ops import op


def checks(row: dict) -> dict:
    """The answer's verifiable grades: ``correct`` against its reference, ``strict`` / ``loose`` against its
    constraints (None where the row has none), and ``verified``: every check it has passed (see
    ``_verified``)."""
    answer = row["completion"]
    ref = row.get("reference")
    cons = row.get("constraints") or []
    graded = score_answer({"constraints": cons}, answer) if cons else None
    correct = grade(answer, ref) if ref else None
    strict = graded["strict"] if graded else None
    return {
        "correct": correct,
        "strict": strict,
        "loose": graded["loose"] if graded else None,
        "verified": _verified(correct, strict),
    }


def _verified(correct: bool | None, strict: bool | None) -> bool | None:
    """Verified right: correct where there is a reference, strictly following where there are constraints,
    both where there are both; None where nothing can be checked."""
    known = [x for x in (correct, strict) if x is not None]
    return all(known) if known else None


@op("score-instruction-pool", 2, note="v2: a verified column (correct and/or strict)")
def score_pool(store: Store, dataset: str, scorer: str, batch_size: int = 16, progress: bool = False) -> str:
    """Score a stored pool (columns ``prompt``, ``completion``; optional ``reference``, ``constraints``) with
    ``scorer`` (any model spec with a chat template, for IFD); returns the scored dataset's id."""
    from heredity.models import materialize

    data_id = store.resolve_id(dataset)
    require_columns(read_table(store.path(data_id)), ["prompt", "completion"], "an instruction pool")
    scorer_id = materialize(scorer, store)

    def run(ctx):
        from heredity.engine.logprobs import ifd_scores
        from heredity.models import load

        rows = read_table(store.path(data_id)).to_pylist()
        if any(not r["completion"] for r in rows):
            raise HeredityError(f"{data_id} has an empty answer; an empty answer has no IFD: drop it")
        model, tok = load(scorer_id, store, merge_adapter=True)
        ifds = ifd_scores(
            model,
            tok,
            [r["prompt"] for r in rows],
            [r["completion"] for r in rows],
            batch_size=batch_size,
            progress=progress,
        )
        out = [
            {**r, "length": len(r["completion"]), "ifd": x, **checks(r)}
            for r, x in zip(rows, ifds, strict=True)
        ]
        path = ctx.output("dataset", "dataset", "scored-pool", meta={"rows": len(out)})
        write_table(path, out)
        return {"rows": len(out)}

    return store.run_step("score-instruction-pool", {"batch_size": batch_size}, [scorer_id, data_id], run)[
        "dataset"
    ]
