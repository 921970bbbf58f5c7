"""Merging: can one model hold four skills by merging four fine-tunes, and does ≈1% of each task vector
suffice?

Methods, as a paper's section would list them:
1. Data: four generated, exactly graded tasks (``data.tasks``: two-digit addition, sentiment of templated
   reviews, numbers in words, reversing random letter strings given one by one). Every task has three
   disjoint parts — train, val, test — and its rows are distinct (drawn without replacement); a sentiment
   review in val or test shares neither its adjective (which alone decides the label) nor its template nor
   its subject with training. ``train_rows`` per task (at most a task's train part: words has 599),
   ``val_rows`` and ``eval_rows`` (test) per task.
2. Fine-tune the base once per task (LoRA, completion-only loss) and once on all four together (the
   multi-task upper reference). One training seed: every comparison below is between these trained models.
3. Merge the four task models with every method: linear average, task arithmetic, TIES, DARE (linear and
   TIES), Localize-and-Stitch with learned masks and dataless masks, and a sparsity curve of dataless
   Localize-and-Stitch (fraction of each task vector kept).
4. Evaluate every model on the val and the test part of every task (greedy decoding, stop at a newline,
   exact match of the first line). Per-task accuracy with a 95% Wilson interval over items; mean accuracy
   over tasks with a Wilson interval on the pooled count (every task has the same n, so the pooled rate is
   the mean over tasks); normalized accuracy (merged ÷ that task's own fine-tune on the same part) is a
   point estimate. For Localize-and-Stitch, the kept fraction and mask overlap; plot the sparsity curve.
5. Selection: the best merge is the one with the highest mean normalized accuracy on VAL (ties: val mean
   accuracy). Its TEST numbers are reported with intervals, and it is compared on test with the runner-up
   on val, as is dataless Localize-and-Stitch at ``sparsity`` with keeping everything: exact McNemar tests
   with Newcombe intervals over the pooled test items (one trained model per arm), Holm-adjusted over the two.
"""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, Field

from heredity.data import put_rows
from heredity.data.tasks import GRADER, TASKS, capacity, grade
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample
from heredity.experiments import experiment
from heredity.experiments.merging_render import _f, markdown, plot
from heredity.merge import MergeConfig, merge
from heredity.models import load, materialize
from heredity.reports.card import save_card
from heredity.reports.stats import (
    fmt_ci,
    fmt_test,
    holm,
    mean_ci,
    min_detectable,
    paired_rate_test,
    paired_test,
    rates_ci,
    verdict,
)
from heredity.store import Store, read_table
from heredity.store.ops import op, rows_op

rows_op("make-task-data")  # rows made here, stored by data.io.put_rows

UNIT = "test items, all tasks pooled; one trained model per arm (one training seed)"


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    train_rows: int = Field(256, ge=8, description="per task; at most the task's train part (words: 599)")
    val_rows: int = Field(40, ge=4, description="validation rows per task: choose the best merge")
    eval_rows: int = Field(60, ge=4, description="test rows per task: the reported numbers")
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(1e-3, gt=0)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    batch_size: int = Field(16, ge=1)
    density: float = Field(0.2, gt=0, le=1, description="TIES / DARE: fraction of each task vector kept")
    lam: float = Field(1.0, gt=0, description="task arithmetic / TIES / DARE scale λ")
    ta_lam: float = Field(
        0.5, gt=0, description="task arithmetic's λ (summing four task vectors overshoots at 1)"
    )
    sparsity: float = Field(
        0.01, gt=0, le=1, description="Localize-and-Stitch: fraction kept (the paper's ≈1%)"
    )
    curve: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.05, 0.1, 1.0])
    localize_steps: int = Field(20, ge=1)
    localize_examples: int = Field(64, ge=1)
    localize_lr: float = Field(0.2, gt=0)
    max_new_tokens: int = Field(16, ge=1)
    sample_batch: int = Field(64, ge=1)
    seeds: int = Field(
        1,
        ge=1,
        description="training seeds: the whole chain (fine-tunes, merges, evals) per seed; "
        "≥ 2 adds tests across seeds, the unit for claims about the methods",
    )
    seed: int = 0

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),  # one seed: ~30 min on 2 cores; its tests are about these trained models
            # val and test: 200 rows per task, all that words and sentiment hold in each part
            "paper": cls(
                train_rows=2000,
                val_rows=200,
                eval_rows=200,
                epochs=3,
                lr=5e-4,
                localize_steps=100,
                localize_examples=64,
                sample_batch=256,
                batch_size=32,
            ),
        }


@experiment("merging", question="Four skills, four fine-tunes, one merged model: which merge keeps most?")
def run(store: Store, config: Config, progress: bool = True) -> dict:
    """The recipe: make each task's train / val / test parts; per training seed, fine-tune, merge and evaluate
    every model (``_chain``); report seed 0's models with the selection on val and its tests
    (``build_report``), and, with several seeds, the comparison across seeds."""
    t0 = time.perf_counter()
    base = materialize(config.base, store)
    n_train = {t: min(config.train_rows, capacity(t, "train")) for t in config.tasks}
    # raises if a part is too small
    train_rows = {t: TASKS[t](n_train[t], "train", config.seed) for t in config.tasks}
    parts = {
        "val": {t: TASKS[t](config.val_rows, "val", config.seed + 2) for t in config.tasks},
        "test": {t: TASKS[t](config.eval_rows, "test", config.seed + 1) for t in config.tasks},
    }

    def task_data(rows: list[dict], name: str, **how) -> str:
        # put_rows keys the rows themselves: a new generator, new data
        return put_rows(store, rows, name, op="make-task-data", config=how)

    train = {t: task_data(train_rows[t], f"{t}-train", task=t, part="train") for t in config.tasks}
    data = {
        p: {t: task_data(rows, f"{t}-{p}", task=t, part=p) for t, rows in by.items()}
        for p, by in parts.items()
    }
    chains = [
        _chain(store, config, base, train, train_rows, data, config.seed + k, progress)
        for k in range(config.seeds)
    ]
    models, scores, merged, tuned, curve = chains[0]
    report = build_report(config, models, scores, merged, tuned, curve, n_train)
    if config.seeds >= 2:
        report["across_seeds"] = across_seeds(config, [c[1] for c in chains], list(merged))
        report["outcome"] += ". " + report["across_seeds"]["outcome"]
    report["seconds"] = round(time.perf_counter() - t0, 1)

    all_models = [m for c in chains for m in c[0].values()]
    card = save_card(store, "merging", report, all_models, markdown, plot)
    return {**card, "lineage_of": merged[f"Localize-and-Stitch, learned ({config.sparsity:.1%})"]["model"]}


@op(
    "eval-tasks",
    3,
    note=(
        "v2: grader, stop rule and batch keyed; v3: the fused decode step refused for mlp_bias / "
        "sliding-window models, whose samples it got wrong"
    ),
)
def _eval(
    store: Store, model_id: str, data: dict[str, dict[str, str]], sample_cfg: dict, progress: bool
) -> dict:
    """Per-item correctness (0/1) of ``model_id`` on every part and task of ``data`` (part → task → dataset
    id), as a stored report (memoized). The rows are read from the dataset artifacts, which are inputs of the
    step; everything else that changes the outcome (sampling config, stop rule, batch size, grader) is in the
    key."""
    keys = [f"{part}/{task}" for part in sorted(data) for task in sorted(data[part])]
    ids = [data[k.split("/")[0]][k.split("/")[1]] for k in keys]
    cfg = {"datasets": keys, "sample": sample_cfg, "decoding": "greedy", "grader": GRADER}

    def fn(ctx):
        mid, *dids = ctx.inputs
        model, tok = load(mid, ctx.store, merge_adapter=True)
        t = time.perf_counter()
        rows = {
            k: read_table(ctx.store.path(d)).to_pylist() for k, d in zip(cfg["datasets"], dids, strict=True)
        }
        order = [(k, r) for k in cfg["datasets"] for r in rows[k]]
        comps = sample(
            model, tok, [r["prompt"] for _, r in order], SampleConfig(**cfg["sample"]), progress=progress
        )
        scores: dict[str, dict[str, list[int]]] = {}
        answers: dict[str, dict[str, list[str]]] = {}
        for (k, r), c in zip(order, comps, strict=True):
            part, task = k.split("/")
            scores.setdefault(part, {}).setdefault(task, []).append(int(grade(c.text, r["completion"])))
            answers.setdefault(part, {}).setdefault(task, []).append(c.text)
        out = ctx.output("scores", "report", f"task-scores-{ctx.store.get(mid).name}")
        (out / "scores.json").write_text(json.dumps({"scores": scores, "answers": answers}))
        return {
            "seconds": round(time.perf_counter() - t, 1),
            **{f"acc_{p}_{k}": sum(v) / len(v) for p, d in scores.items() for k, v in d.items()},
        }

    rid = store.run_step("eval-tasks", cfg, [model_id, *ids], fn)["scores"]
    return json.loads((store.path(rid) / "scores.json").read_text())["scores"]


def _chain(
    store: Store,
    config: Config,
    base: str,
    train: dict,
    train_rows: dict,
    data: dict,
    seed: int,
    progress: bool,
) -> tuple:
    """One training seed's fine-tunes, merges and evaluations: (models, scores, merged, tuned, curve)."""
    tuned, multi = _finetunes(store, config, base, train, train_rows, seed, progress)
    merges, curve = _merge_configs(config, base, tuned, train, seed)
    merged = {label: merge(store, c, progress=progress) for label, c in merges.items()}

    models = {
        "base (no fine-tune)": base,
        **{f"fine-tuned on {t}": tuned[t] for t in config.tasks},
        "multi-task fine-tune": multi,
        **{k: v["model"] for k, v in merged.items()},
    }
    sample_cfg = SampleConfig(
        temperature=0, max_new_tokens=config.max_new_tokens, batch_size=config.sample_batch, stop=["\n"]
    ).model_dump()
    scores = {label: _eval(store, mid, data, sample_cfg, progress) for label, mid in models.items()}
    return models, scores, merged, tuned, curve


def _finetunes(
    store: Store, config: Config, base: str, train: dict, train_rows: dict, seed: int, progress: bool
) -> tuple[dict[str, str], str]:
    """The base fine-tuned once per task ({task: model}) and once on all tasks together (the multi-task
    reference)."""
    ft = FinetuneConfig(
        method="lora",
        epochs=config.epochs,
        lr=config.lr,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        batch_size=config.batch_size,
        seed=seed,
    )
    tuned = {
        task: finetune(store, base, train[task], ft, progress=progress)["model"] for task in config.tasks
    }
    all_rows = [r for task in config.tasks for r in train_rows[task]]
    multi_data = put_rows(
        store,
        all_rows,
        "all-tasks-train",
        op="make-task-data",
        config={"tasks": config.tasks, "part": "train"},
        inputs=[train[t] for t in config.tasks],
    )
    multi = finetune(store, base, multi_data, ft, progress=progress)["model"]
    return tuned, multi


def _merge_configs(
    config: Config, base: str, tuned: dict, train: dict, seed: int
) -> tuple[dict[str, MergeConfig], dict[float, MergeConfig]]:
    """Every merge of the task models, by label (the sparsity curve's last), and the curve's own {sparsity:
    merge} (dataless Localize-and-Stitch)."""

    def cfg(
        method: str,
        name: str,
        params: dict | None = None,
        localize: dict | None = None,
        with_data: bool = False,
    ):
        return MergeConfig(
            merge_method=method,
            base_model=base,
            name=name,
            parameters=params or {},
            seed=seed,
            models=[{"model": tuned[t], **({"data": train[t]} if with_data else {})} for t in config.tasks],
            localize=localize,
        )

    loc = {"steps": config.localize_steps, "examples": config.localize_examples, "lr": config.localize_lr}
    pct = f"{config.sparsity:.1%}"
    merges = {
        "linear average": cfg("linear", "merge-linear"),
        f"task arithmetic (λ={config.ta_lam})": cfg(
            "task_arithmetic", "merge-task-arithmetic", {"lambda": config.ta_lam}
        ),
        f"TIES (density {config.density})": cfg(
            "ties", "merge-ties", {"density": config.density, "lambda": config.lam}
        ),
        f"DARE linear (density {config.density})": cfg(
            "dare_linear", "merge-dare-linear", {"density": config.density, "lambda": config.ta_lam}
        ),
        # normalize: the disjoint *mean* as in TIES (mergekit's dare_ties default is the plain sum)
        f"DARE TIES (density {config.density})": cfg(
            "dare_ties",
            "merge-dare-ties",
            {"density": config.density, "lambda": config.lam, "normalize": True},
        ),
        f"Localize-and-Stitch, learned ({pct})": cfg(
            "localize_stitch",
            "merge-ls-learned",
            {},
            {**loc, "sparsity": config.sparsity, "dataless": False},
            with_data=True,
        ),
    }
    curve = {
        s: cfg("localize_stitch", f"merge-ls-dataless-{s:g}", {}, {"sparsity": s, "dataless": True})
        for s in config.curve
    }
    for s, c in curve.items():
        merges[f"Localize-and-Stitch, dataless ({s:.1%})"] = c
    return merges, curve


def across_seeds(config: Config, seed_scores: list[dict], merge_labels: list[str]) -> dict:
    """With ≥ 2 training seeds: each model's mean accuracy per seed (test and val), t intervals over seeds,
    the merge chosen by its seed-averaged val accuracy, and that merge vs the runner-up on test, paired by
    seed."""
    tasks = config.tasks

    def mean_acc(sc, label, part):
        bits = [b for t in tasks for b in sc[label][part][t]]
        return sum(bits) / len(bits)

    labels = list(seed_scores[0])
    per = {lab: {p: [mean_acc(sc, lab, p) for sc in seed_scores] for p in ("val", "test")} for lab in labels}
    rows = [
        {
            "model": lab,
            "test_per_seed": per[lab]["test"],
            "test": mean_ci(per[lab]["test"], bounds=(0, 1), allow_binary=True),
            "val": sum(per[lab]["val"]) / len(per[lab]["val"]),
        }
        for lab in labels
    ]
    ranking = sorted(merge_labels, key=lambda lab: sum(per[lab]["val"]), reverse=True)
    best, runner = ranking[0], ranking[1] if len(ranking) > 1 else None
    unit = "training seeds (a full chain each)"
    out = {"seeds": len(seed_scores), "rows": rows, "chosen": best, "runner_up": runner, "unit": unit}
    text = f"Across {len(seed_scores)} training seeds: {best} chosen by seed-averaged val mean accuracy"
    if runner is not None:
        t = paired_test(per[best]["test"], per[runner]["test"], unit)
        out["comparison"] = {"a": best, "b": runner, **t}
        text += f"; vs {runner} on test: {fmt_test(t, 3)}: {verdict(t, +1)['words']}"
        if t["p"] != t["p"] or t["p"] >= 0.05:
            text += f" (80% power only for |Δ| ≥ {min_detectable(t['sd'], t['n'], family=1):.2g})"
    out["outcome"] = text
    return out


def _part_stats(bits: dict[str, list[int]], own: dict[str, float], tasks: list[str]) -> dict:
    """Accuracy per task (Wilson), mean accuracy over tasks (Wilson on the pooled count) and normalized
    accuracy (÷ the task's own fine-tune on the same part; a point estimate, None where the own fine-tune
    scored 0)."""
    n = {t: len(bits[t]) for t in tasks}
    if len(set(n.values())) != 1:
        raise ValueError(f"tasks have unequal n ({n}): the pooled rate would not be the mean over tasks")
    acc = {t: rates_ci(bits[t]) for t in tasks}
    norm = {t: (acc[t]["mean"] / own[t] if own[t] > 0 else None) for t in tasks}
    valid = [v for v in norm.values() if v is not None]
    return {
        "accuracy": acc,
        "n": n,
        "normalized": norm,
        "mean_normalized": sum(valid) / len(valid) if valid else None,
        "mean_accuracy": rates_ci([b for t in tasks for b in bits[t]]),
    }


def _pooled(scores: dict, label: str, tasks: list[str], part: str = "test") -> list[int]:
    return [b for t in tasks for b in scores[label][part][t]]


def build_report(
    config: Config,
    models: dict,
    scores: dict,
    merged: dict,
    tuned: dict,
    curve: dict,
    n_train: dict | None = None,
) -> dict:
    """The report: every model's accuracy on test and val, the Localize-and-Stitch masks and sparsity curve,
    and the selection on val with its comparisons on test."""
    tasks = config.tasks
    own = {
        p: {
            t: sum(scores[f"fine-tuned on {t}"][p][t]) / len(scores[f"fine-tuned on {t}"][p][t])
            for t in tasks
        }
        for p in ("val", "test")
    }
    rows = []
    for label, mid in models.items():
        test = _part_stats(scores[label]["test"], own["test"], tasks)
        rows.append(
            {
                "model": label,
                "id": mid,
                "merged": label in merged,
                **test,
                "val": _part_stats(scores[label]["val"], own["val"], tasks),
            }
        )
    by = {r["model"]: r for r in rows}
    ls = {
        label: {"kept_fraction": m.metrics.get("kept_fraction"), "overlap": m.metrics.get("overlap")}
        for label, m in merged.items()
        if "kept_fraction" in m.metrics
    }
    curve_pts = [
        {
            "sparsity": s,
            "mean_normalized": by[lab]["mean_normalized"],
            "mean_accuracy": by[lab]["mean_accuracy"],
        }
        for s in curve
        for lab in [f"Localize-and-Stitch, dataless ({s:.1%})"]
    ]
    selection = _selection(config, scores, by, merged, curve)
    return {
        "config": config.model_dump(),
        "tasks": tasks,
        "rows": rows,
        "own_accuracy": own,
        "localize": ls,
        "curve": curve_pts,
        "selection": selection,
        "train_rows": n_train or {t: config.train_rows for t in tasks},
        "outcome": _outcome(config, by, selection),
        "tuned": tuned,
    }


def _selection(config: Config, scores: dict, by: dict, merged: dict, curve: dict) -> dict:
    """Selection on val; the chosen merge's comparisons on test (vs the runner-up on val; dataless
    Localize-and-Stitch at ``sparsity`` vs keeping everything), Holm-adjusted."""
    tasks = config.tasks
    undefined = all(by[lab]["val"]["mean_normalized"] is None for lab in merged)
    criterion = (
        "val mean accuracy (no individual fine-tune scored above 0 on val, so normalized accuracy is "
        "undefined)"
        if undefined
        else "val mean normalized accuracy (ties: val mean accuracy)"
    )

    def key(lab: str) -> tuple:
        v = by[lab]["val"]
        return (-1.0 if v["mean_normalized"] is None else v["mean_normalized"], v["mean_accuracy"]["mean"])

    ranking = sorted(merged, key=key, reverse=True)  # stable: equal scores keep the listing order
    best, runner = ranking[0], (ranking[1] if len(ranking) > 1 else None)
    comparisons = []
    if runner is not None:
        comparisons.append(
            {
                "name": "chosen merge vs runner-up on val",
                "a": best,
                "b": runner,
                "expected": 1,
                **paired_rate_test(_pooled(scores, best, tasks), _pooled(scores, runner, tasks), UNIT),
            }
        )
    one, full = (
        f"Localize-and-Stitch, dataless ({config.sparsity:.1%})",
        f"Localize-and-Stitch, dataless ({1.0:.1%})",
    )
    if config.sparsity in curve and 1.0 in curve and config.sparsity != 1.0:
        comparisons.append(
            {
                "name": f"dataless Localize-and-Stitch, {config.sparsity:.1%} vs 100% kept",
                "a": one,
                "b": full,
                "expected": 0,
                **paired_rate_test(_pooled(scores, one, tasks), _pooled(scores, full, tasks), UNIT),
            }
        )
    for c, p in zip(comparisons, holm([c["p"] for c in comparisons]), strict=True):
        c["p_holm"] = p
        c["verdict"] = verdict(c, c["expected"], p=p)["words"]
    return {
        "criterion": criterion,
        "chosen": best,
        "runner_up": runner,
        "comparisons": comparisons,
        "ranking": [
            {
                "model": lab,
                "val_mean_normalized": by[lab]["val"]["mean_normalized"],
                "val_mean_accuracy": by[lab]["val"]["mean_accuracy"],
            }
            for lab in ranking
        ],
    }


def _outcome(config: Config, by: dict, sel: dict) -> str:
    b = by[sel["chosen"]]
    nv, nt = b["val"]["n"][config.tasks[0]], b["n"][config.tasks[0]]
    by_acc = sel["criterion"].startswith("val mean accuracy")
    how = "mean accuracy" if by_acc else "mean normalized accuracy"
    val_score = b["val"]["mean_accuracy"]["mean"] if by_acc else b["val"]["mean_normalized"]
    text = (
        f"chosen on validation ({nv} val items per task) by {how}: {sel['chosen']} (val {how} "
        f"{_f(val_score)}, "
        f"a point estimate); on test ({nt} items per task, {b['mean_accuracy']['n']} pooled) it scores mean "
        "accuracy "
        f"{fmt_ci(b['mean_accuracy'], 2)} (Wilson, pooled over tasks) and mean normalized accuracy "
        f"{_f(b['mean_normalized'])} (point estimate; multi-task fine-tune "
        f"{_f(by['multi-task fine-tune']['mean_normalized'])})"
    )
    for c in sel["comparisons"]:
        text += (
            f"; {c['name']} ({c['a']} − {c['b']}), on test: {fmt_test(c, 3, p=c['p_holm'])}: {c['verdict']}"
        )
    return text + (
        ". These comparisons are over test items for these trained models (one fine-tune per task, one "
        "training seed), not about the merge methods or training in general"
    )
