"""The merging experiment's evaluation: disjoint train/val/test parts of distinct items, selection on val,
numbers on test with non-degenerate intervals, and an eval step whose key holds everything it sees."""

import json
import re

import pytest

from heredity.data import put_rows
from heredity.data import tasks as T
from heredity.data.io import rows_digest
from heredity.engine import SampleConfig
from heredity.experiments import merging

SIZES = {
    "addition": (1000, 300, 300),
    "words": (599, 200, 200),
    "sentiment": (1000, 200, 200),
    "reverse": (2000, 500, 500),
}


def _parts(task: str) -> dict[str, list[dict]]:
    seeds = {"train": 0, "val": 2, "test": 1}  # as the experiment draws them
    return {p: T.TASKS[task](n, p, seeds[p]) for p, n in zip(T.PARTS, SIZES[task], strict=True)}


@pytest.mark.parametrize("task", list(T.TASKS))
def test_parts_are_disjoint_and_items_distinct(task):
    parts = _parts(task)
    prompts = {p: [r["prompt"] for r in rows] for p, rows in parts.items()}
    for p, ps in prompts.items():
        assert len(ps) == len(set(ps)) == SIZES[task][T.PARTS.index(p)], (task, p)  # without replacement
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(prompts[a]) & set(prompts[b]), (task, a, b)
    assert T.TASKS[task](20, "eval", 1) == T.TASKS[task](20, "test", 1)  # "eval" is "test"
    assert T.TASKS[task](20, "val", 5) == T.TASKS[task](20, "val", 5)  # seeded: the same rows, the same key
    assert all(T.grade(r["completion"], r["completion"]) for rows in parts.values() for r in rows)


def _parse_review(prompt: str) -> tuple[str, str, str]:
    review = prompt.split("\n")[0].removeprefix("Review: ")
    hits = []
    for t in T.TEMPLATES:
        rx = (
            "^"
            + re.escape(t).replace(re.escape("{s}"), r"(?P<s>\w+)").replace(re.escape("{a}"), r"(?P<a>\w+)")
            + "$"
        )
        m = re.match(rx, review)
        if m and m["a"] in T.POSITIVE + T.NEGATIVE and m["s"] in T.SUBJECTS:
            hits.append((t, m["s"], m["a"]))
    assert len(hits) == 1, (review, hits)
    return hits[0]


def test_sentiment_val_and_test_share_no_adjective_template_or_subject_with_training():
    parts = {p: T.sentiment(n, p, s) for p, n, s in (("train", 5400, 0), ("val", 200, 2), ("test", 200, 1))}
    seen = {}
    for p, rows in parts.items():
        parsed = [_parse_review(r["prompt"]) for r in rows]
        for (_, _, a), r in zip(parsed, rows, strict=True):
            assert (a in T.POSITIVE) == (r["completion"] == "positive")
        labels = [r["completion"] for r in rows]
        assert labels.count("positive") == labels.count("negative"), (
            p
        )  # balanced: a constant answer scores 0.5
        seen[p] = {k: {x[i] for x in parsed} for i, k in enumerate(("template", "subject", "adjective"))}
        pos = seen[p]["adjective"] & set(T.POSITIVE)
        assert len(pos) >= 5 and len(seen[p]["adjective"] - pos) >= 5 and len(seen[p]["template"]) >= 4, p
    for held in ("val", "test"):
        for k in ("template", "subject", "adjective"):
            assert not seen["train"][k] & seen[held][k], (held, k)
    assert not seen["val"]["adjective"] & seen["test"]["adjective"]


def test_reverse_items_are_random_strings_fixed_to_a_part_by_hash():
    parts = _parts("reverse")
    for p, rows in parts.items():
        for r in rows:
            letters = (
                r["prompt"].removeprefix("Reverse the order of these letters: ").split(". Answer")[0].split()
            )
            assert 4 <= len(letters) <= 6 and r["completion"] == " ".join(letters[::-1])
            assert T.reverse_part("".join(letters)) == p
    assert len({r["prompt"] for r in parts["train"]}) == 2000


def test_asking_a_part_for_more_items_than_it_holds_is_an_error():
    for task, part in (("words", "val"), ("sentiment", "test"), ("addition", "test"), ("words", "train")):
        most = T.capacity(task, part)
        assert len(T.TASKS[task](most, part, 0)) == most
        with pytest.raises(
            ValueError, match=rf"task {task}, part '{part}': asked for n={most + 1} .*at most {most}"
        ):
            T.TASKS[task](most + 1, part, 0)
    with pytest.raises(ValueError, match="at most 200"):
        T.words(300, "eval")
    with pytest.raises(ValueError, match="part must be one of"):
        T.addition(5, "holdout")


# ---- the report: selection on val, numbers on test --------------------------------------------------------


class _Merged:
    metrics: dict = {}


def _fake(tasks, val_acc: float, test_acc: float, n_val: int = 20, n_test: int = 30):
    """Scores with exactly round(acc · n) correct items per task."""

    def bits(acc, n):
        return {t: [1] * round(acc * n) + [0] * (n - round(acc * n)) for t in tasks}

    return {"val": bits(val_acc, n_val), "test": bits(test_acc, n_test)}


def test_best_merge_is_chosen_on_val_and_reported_on_test_with_intervals():
    tasks = ["addition", "sentiment"]
    cfg = merging.Config(tasks=tasks, val_rows=20, eval_rows=30, curve=[0.01, 1.0])
    labels = [
        "base (no fine-tune)",
        "fine-tuned on addition",
        "fine-tuned on sentiment",
        "multi-task fine-tune",
        "A",
        "B",
        "Localize-and-Stitch, dataless (1.0%)",
        "Localize-and-Stitch, dataless (100.0%)",
    ]
    accs = {
        "base (no fine-tune)": (0.0, 0.0),
        "fine-tuned on addition": (1.0, 1.0),
        "fine-tuned on sentiment": (1.0, 1.0),
        "multi-task fine-tune": (1.0, 1.0),
        "A": (0.8, 0.3),
        "B": (0.5, 0.9),  # A wins on val, B on test
        "Localize-and-Stitch, dataless (1.0%)": (0.2, 0.2),
        "Localize-and-Stitch, dataless (100.0%)": (0.1, 0.1),
    }
    scores = {lab: _fake(tasks, v, te) for lab, (v, te) in accs.items()}
    merged = {lab: _Merged() for lab in labels[4:]}
    models = {lab: f"mdl-{i}" for i, lab in enumerate(labels)}
    rep = merging.build_report(
        cfg, models, scores, merged, {t: f"t-{t}" for t in tasks}, {0.01: None, 1.0: None}
    )
    sel = rep["selection"]
    assert sel["chosen"] == "A" and sel["runner_up"] == "B", "chosen on val, not on test"
    assert [x["model"] for x in sel["ranking"]][:2] == ["A", "B"]
    for r in rep["rows"]:  # every rate, all-correct and all-wrong ones included, has a real interval
        for ci in [
            *r["accuracy"].values(),
            r["mean_accuracy"],
            *r["val"]["accuracy"].values(),
            r["val"]["mean_accuracy"],
        ]:
            assert 0 <= ci["lo"] <= ci["mean"] <= ci["hi"] <= 1 and ci["lo"] < ci["hi"], (r["model"], ci)
    by = {r["model"]: r for r in rep["rows"]}
    assert by["A"]["mean_accuracy"]["n"] == 60 and by["A"]["mean_accuracy"]["mean"] == pytest.approx(0.3)
    assert by["A"]["mean_normalized"] == pytest.approx(0.3) and by["A"]["val"][
        "mean_normalized"
    ] == pytest.approx(0.8)
    first = sel["comparisons"][0]
    assert (first["a"], first["b"], first["n"]) == ("A", "B", 60) and first["diff"] == pytest.approx(-0.6)
    assert "test items" in first["unit"] and "one training seed" in first["unit"]
    assert first["lo"] < first["diff"] < first["hi"] < 0 and first["p_holm"] < 0.05
    assert "opposite" in first["verdict"]  # chosen on val, significantly worse on test: said so, not hidden
    assert len(sel["comparisons"]) == 2 and sel["comparisons"][1]["p_holm"] >= sel["comparisons"][1]["p"]
    out = rep["outcome"]
    assert out.startswith("chosen on validation (20 val items per task)") and "A" in out
    assert "unit: test items" in out and "n = 60" in out and "one training seed" in out
    assert "0.30 [" in out  # the chosen merge's test accuracy with its interval, not its val score
    md = merging.markdown(rep)
    assert "## Selection (validation) and test" in md and "| A (chosen) |" in md and "| B (runner-up) |" in md
    assert "1.00 [1.00, 1.00]" not in md and "[0.89, 1.00]" in md  # 30/30 is Wilson [0.886, 1]


def test_eval_step_reads_its_rows_from_inputs_and_keys_every_setting(tiny, monkeypatch):
    s, aid, _, _ = tiny
    rows = {"val": T.words(4, "val", 2), "test": T.words(5, "test", 1)}
    data = {
        p: {
            "words": put_rows(
                s,
                r,
                f"words-{p}",
                op="make-task-data",
                config={"task": "words", "part": p, "rows_sha256": rows_digest(r)},
            )
        }
        for p, r in rows.items()
    }
    calls = []
    real = merging.sample
    monkeypatch.setattr(merging, "sample", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    sc = SampleConfig(temperature=0, max_new_tokens=3, batch_size=4, stop=["\n"]).model_dump()
    scores = merging._eval(
        s, aid, data, sc, progress=False
    )  # HEREDITY_CHECK_KEYS=1 (conftest): the closure is checked
    assert {p: len(v["words"]) for p, v in scores.items()} == {"val": 4, "test": 5}
    assert (
        len(calls) == 1 and calls[0].batch_size == 4 and calls[0].stop == ["\n"] and calls[0].temperature == 0
    )
    rid = next(a.id for a in s.list("report") if a.name.startswith("task-scores-"))
    step = s.step_of(rid)
    assert step.op == "eval-tasks" and step.inputs == [aid, data["test"]["words"], data["val"]["words"]]
    assert step.config["sample"] == sc and step.config["grader"] == T.GRADER
    assert step.config["datasets"] == ["test/words", "val/words"]
    assert merging._eval(s, aid, data, sc, progress=False) == scores and len(calls) == 1  # memoized
    for changed in ({**sc, "batch_size": 2}, {**sc, "stop": ["\n", "."]}, {**sc, "max_new_tokens": 2}):
        merging._eval(s, aid, data, changed, progress=False)  # every setting is in the key: each runs anew
    assert len(calls) == 4


def test_merging_pipeline_selects_on_val_with_real_intervals(store):
    cfg = merging.Config(
        base="tiny:micro",
        tasks=["addition", "sentiment"],
        train_rows=8,
        val_rows=4,
        eval_rows=5,
        epochs=1,
        batch_size=8,
        curve=[0.01, 1.0],
        localize_steps=1,
        localize_examples=4,
        max_new_tokens=2,
        sample_batch=64,
    )
    out = merging.run(store, cfg, progress=False)
    report = json.loads((store.path(out["report"]) / "report.json").read_text())
    sel = report["selection"]
    merges = [r for r in report["rows"] if r["merged"]]
    assert sel["chosen"] in {r["model"] for r in merges} and sel["runner_up"] in {r["model"] for r in merges}
    assert sorted(x["model"] for x in sel["ranking"]) == sorted(r["model"] for r in merges)
    keys = [
        (-1 if x["val_mean_normalized"] is None else x["val_mean_normalized"], x["val_mean_accuracy"]["mean"])
        for x in sel["ranking"]
    ]
    assert keys == sorted(keys, reverse=True) and sel["chosen"] == sel["ranking"][0]["model"]
    for r in report["rows"]:
        assert r["n"] == {"addition": 5, "sentiment": 5} and r["val"]["n"] == {"addition": 4, "sentiment": 4}
        for ci in [
            *r["accuracy"].values(),
            r["mean_accuracy"],
            *r["val"]["accuracy"].values(),
            r["val"]["mean_accuracy"],
        ]:
            assert ci["lo"] < ci["hi"], (r["model"], ci)
    assert all(c["n"] == 10 and c["lo"] < c["hi"] for c in sel["comparisons"])
    assert "chosen on validation" in report["outcome"] and "one training seed" in report["outcome"]
    md = out["markdown"]
    assert (
        "## Selection (validation) and test" in md and "## Sparsity curve" in md and "unit: test items" in md
    )
    assert not re.search(r"(\d\.\d\d) \[\1, \1\]", md), "a zero-width interval in the report"


def test_across_seeds_selects_on_val_and_tests_over_seeds():
    """With several training seeds the unit of replication is the seed: a t interval over seeds and a paired
    test of the chosen merge against the runner-up, by seed."""
    tasks = ["addition", "sentiment"]
    cfg = merging.Config(tasks=tasks, seeds=3)
    per_seed = []
    for k, (a_test, b_test) in enumerate([(0.60, 0.40), (0.62, 0.45), (0.58, 0.38)]):
        per_seed.append(
            {
                "A": _fake(tasks, 0.7, a_test, n_val=20, n_test=100),
                "B": _fake(tasks, 0.5 + 0.01 * k, b_test, n_val=20, n_test=100),
                "base (no fine-tune)": _fake(tasks, 0.0, 0.0, n_val=20, n_test=100),
            }
        )
    out = merging.across_seeds(cfg, per_seed, ["A", "B"])
    assert out["chosen"] == "A" and out["runner_up"] == "B" and out["seeds"] == 3
    c = out["comparison"]
    assert c["unit"].startswith("training seeds") and c["n"] == 3 and c["diff"] == pytest.approx(0.19)
    assert c["direction"] == "higher" and c["p"] < 0.05
    assert "unit: training seeds (a full chain each), n = 3" in out["outcome"]
    rows = {r["model"]: r for r in out["rows"]}
    assert rows["A"]["test"]["lo"] < rows["A"]["test"]["mean"] < rows["A"]["test"]["hi"]
    assert "undetermined" in merging.fmt_ci(
        rows["base (no fine-tune)"]["test"]
    )  # 0 on every seed: no spread, no interval
