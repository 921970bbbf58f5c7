"""The merging experiment's pipeline end to end on a tiny base, and the task generators/grader."""

import json

from heredity.data.tasks import TASKS, grade, number_words
from heredity.experiments import merging


def test_tasks_are_graded_exactly_and_split_cleanly():
    assert (
        number_words(47) == "forty-seven"
        and number_words(305) == "three hundred five"
        and number_words(12) == "twelve"
    )
    assert grade(" 81.\nmore", "81") and grade("Positive", "positive") and not grade("81 is it", "81")
    for name, make in TASKS.items():
        train, ev = make(200, "train", 0), make(50, "eval", 1)
        assert len(train) == 200 and len(ev) == 50
        assert all(grade(r["completion"], r["completion"]) for r in train)
        if name != "sentiment":  # reviews are built from templates; the other tasks split their inputs
            assert not {r["prompt"] for r in train} & {r["prompt"] for r in ev}, name


def test_merging_pipeline_on_a_tiny_base(store):
    cfg = merging.Config(
        base="tiny:small",
        train_rows=16,
        val_rows=6,
        eval_rows=6,
        epochs=1,
        batch_size=8,
        curve=[0.01, 1.0],
        localize_steps=2,
        localize_examples=8,
        max_new_tokens=4,
        sample_batch=32,
    )
    out = merging.run(store, cfg, progress=False)
    report = json.loads((store.path(out["report"]) / "report.json").read_text())
    labels = [r["model"] for r in report["rows"]]
    assert labels[:6] == [
        "base (no fine-tune)",
        "fine-tuned on addition",
        "fine-tuned on reverse",
        "fine-tuned on sentiment",
        "fine-tuned on words",
        "multi-task fine-tune",
    ]
    assert sum("Localize-and-Stitch" in x for x in labels) == 3 and len(labels) == 6 + 5 + 3
    assert all(r["n"] == {t: 6 for t in cfg.tasks} for r in report["rows"])
    learned = next(v for k, v in report["localize"].items() if "learned" in k)
    assert len(learned["kept_fraction"]) == 4, "one entry per task, though the four fine-tunes share a name"
    assert all(abs(f - 0.01) < 1e-3 for f in learned["kept_fraction"].values())
    assert len(learned["overlap"]) == 6
    assert [p["sparsity"] for p in report["curve"]] == [0.01, 1.0]
    step = store.step_of(
        out["lineage_of"]
    )  # the learned stitch lists the base, the four adapters and their data
    assert step.op == "merge" and len(step.inputs) == 1 + 4 + 4
    assert "| model |" in out["markdown"] and (store.path(out["report"]) / "plot.png").stat().st_size > 1000
