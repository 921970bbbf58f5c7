"""Merging: can one model hold four skills by merging four fine-tunes, and does ≈1% of each task vector suffice?

Methods, as a paper's section would list them:
1. Data: four generated, exactly graded tasks (``data.tasks``: two-digit addition,
   sentiment of templated reviews, numbers in words; reversing letters given one by one), train and eval
   rows from disjoint inputs.
2. Fine-tune the base once per task (LoRA, completion-only loss) and once on all four together (the
   multi-task upper reference).
3. Merge the four task models with every method: linear average, task arithmetic, TIES, DARE (linear and
   TIES), Localize-and-Stitch with learned masks and dataless masks, and a sparsity curve of dataless
   Localize-and-Stitch (fraction of each task vector kept).
4. Evaluate every model on every task (greedy decoding, exact match), report accuracy with 95% intervals,
   normalized accuracy (merged ÷ that task's own fine-tune) and, for Localize-and-Stitch, the kept fraction
   and mask overlap; plot the sparsity curve.
"""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, Field

from heredity.data import put_rows
from heredity.data.io import rows_digest
from heredity.data.tasks import TASKS, grade
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample
from heredity.merge import MergeConfig, merge
from heredity.models import load, materialize
from heredity.reports.card import save_card
from heredity.reports.stats import fmt_ci, mean_ci
from heredity.store import Store


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    train_rows: int = Field(256, ge=8)
    eval_rows: int = Field(60, ge=4)
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(1e-3, gt=0)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    batch_size: int = Field(16, ge=1)
    density: float = Field(0.2, gt=0, le=1, description="TIES / DARE: fraction of each task vector kept")
    lam: float = Field(1.0, gt=0, description="task arithmetic / TIES / DARE scale λ")
    ta_lam: float = Field(0.5, gt=0, description="task arithmetic's λ (summing four task vectors overshoots at 1)")
    sparsity: float = Field(0.01, gt=0, le=1, description="Localize-and-Stitch: fraction kept (the paper's ≈1%)")
    curve: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.05, 0.1, 1.0])
    localize_steps: int = Field(20, ge=1)
    localize_examples: int = Field(64, ge=1)
    localize_lr: float = Field(0.2, gt=0)
    max_new_tokens: int = Field(16, ge=1)
    sample_batch: int = Field(64, ge=1)
    seed: int = 0

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "paper": cls(train_rows=2000, eval_rows=500, epochs=3, lr=5e-4, localize_steps=100, localize_examples=64,
                         sample_batch=256, batch_size=32),
        }



def _eval(store: Store, model_id: str, evals: dict[str, str], rows: dict[str, list[dict]], config: Config,
          progress: bool) -> dict:
    """Per-item correctness of ``model_id`` on every task, as a stored report (memoized)."""
    cfg = {"tasks": sorted(evals), "max_new_tokens": config.max_new_tokens, "decoding": "greedy"}

    def fn(ctx):
        model, tok = load(model_id, store, merge_adapter=True)
        t = time.perf_counter()
        order = [(task, r) for task in sorted(rows) for r in rows[task]]
        comps = sample(model, tok, [r["prompt"] for _, r in order],
                       SampleConfig(temperature=0, max_new_tokens=config.max_new_tokens, batch_size=config.sample_batch,
                                    stop=["\n"]), progress=progress)
        scores: dict[str, list[int]] = {task: [] for task in rows}
        answers: dict[str, list[str]] = {task: [] for task in rows}
        for (task, r), c in zip(order, comps, strict=True):
            scores[task].append(int(grade(c.text, r["completion"])))
            answers[task].append(c.text)
        out = ctx.output("scores", "report", f"task-scores-{store.get(model_id).name}")
        (out / "scores.json").write_text(json.dumps({"scores": scores, "answers": answers}))
        return {"seconds": round(time.perf_counter() - t, 1), **{f"acc_{k}": sum(v) / len(v) for k, v in scores.items()}}

    rid = store.run_step("eval-tasks", cfg, [model_id, *[evals[k] for k in sorted(evals)]], fn)["scores"]
    return json.loads((store.path(rid) / "scores.json").read_text())["scores"]


def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    base = materialize(config.base, store)
    train, evals, eval_rows = {}, {}, {}

    def task_data(rows: list[dict], name: str, **how) -> str:  # keyed on the rows themselves: a new generator, new data
        return put_rows(store, rows, name, op="make-task-data", config={**how, "rows_sha256": rows_digest(rows)})

    for task in config.tasks:
        tr = TASKS[task](config.train_rows, "train", config.seed)
        ev = TASKS[task](config.eval_rows, "eval", config.seed + 1)
        train[task] = task_data(tr, f"{task}-train", task=task, part="train")
        evals[task] = task_data(ev, f"{task}-eval", task=task, part="eval")
        eval_rows[task] = ev
    ft = FinetuneConfig(method="lora", epochs=config.epochs, lr=config.lr, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                        batch_size=config.batch_size, seed=config.seed)
    tuned = {task: finetune(store, base, train[task], ft, progress=progress)["model"] for task in config.tasks}
    all_rows = [r for task in config.tasks for r in TASKS[task](config.train_rows, "train", config.seed)]
    multi_data = put_rows(store, all_rows, "all-tasks-train", op="make-task-data",
                          config={"tasks": config.tasks, "part": "train", "rows_sha256": rows_digest(all_rows)},
                          inputs=[train[t] for t in config.tasks])
    multi = finetune(store, base, multi_data, ft, progress=progress)["model"]

    def cfg(method: str, name: str, params: dict | None = None, localize: dict | None = None, data: bool = False):
        return MergeConfig(merge_method=method, base_model=base, name=name, parameters=params or {}, seed=config.seed,
                           models=[{"model": tuned[t], **({"data": train[t]} if data else {})} for t in config.tasks],
                           localize=localize)

    loc = {"steps": config.localize_steps, "examples": config.localize_examples, "lr": config.localize_lr}
    pct = f"{config.sparsity:.1%}"
    merges = {
        "linear average": cfg("linear", "merge-linear"),
        f"task arithmetic (λ={config.ta_lam})": cfg("task_arithmetic", "merge-task-arithmetic", {"lambda": config.ta_lam}),
        f"TIES (density {config.density})": cfg("ties", "merge-ties", {"density": config.density, "lambda": config.lam}),
        f"DARE linear (density {config.density})": cfg("dare_linear", "merge-dare-linear",
                                                       {"density": config.density, "lambda": config.ta_lam}),
        f"DARE TIES (density {config.density})": cfg("dare_ties", "merge-dare-ties", {"density": config.density, "lambda": config.lam}),
        f"Localize-and-Stitch, learned ({pct})": cfg("localize_stitch", "merge-ls-learned", {},
                                                     {**loc, "sparsity": config.sparsity, "dataless": False}, data=True),
    }
    curve = {s: cfg("localize_stitch", f"merge-ls-dataless-{s:g}", {}, {"sparsity": s, "dataless": True}) for s in config.curve}
    for s, c in curve.items():
        merges[f"Localize-and-Stitch, dataless ({s:.1%})"] = c
    merged = {label: merge(store, c, progress=progress) for label, c in merges.items()}

    models = {"base (no fine-tune)": base, **{f"fine-tuned on {t}": tuned[t] for t in config.tasks},
              "multi-task fine-tune": multi, **{k: v["model"] for k, v in merged.items()}}
    scores = {label: _eval(store, mid, evals, eval_rows, config, progress) for label, mid in models.items()}
    report = build_report(config, models, scores, merged, tuned, curve)
    report["seconds"] = round(time.perf_counter() - t0, 1)

    card = save_card(store, "merging", report, list(models.values()), markdown, plot)
    return {**card, "lineage_of": merged[f"Localize-and-Stitch, learned ({pct})"]["model"]}


def build_report(config: Config, models: dict, scores: dict, merged: dict, tuned: dict, curve: dict) -> dict:
    tasks = config.tasks
    own = {t: sum(scores[f"fine-tuned on {t}"][t]) / len(scores[f"fine-tuned on {t}"][t]) for t in tasks}
    rows = []
    for label, mid in models.items():
        acc = {t: mean_ci(scores[label][t], bounds=(0, 1)) for t in tasks}
        norm = {t: (acc[t]["mean"] / own[t] if own[t] > 0 else None) for t in tasks}
        valid = [v for v in norm.values() if v is not None]
        rows.append({"model": label, "id": mid, "merged": label in merged, "accuracy": acc, "n": {t: len(scores[label][t]) for t in tasks},
                     "normalized": norm, "mean_normalized": sum(valid) / len(valid) if valid else None,
                     "mean_accuracy": sum(a["mean"] for a in acc.values()) / len(tasks)})
    by = {r["model"]: r for r in rows}
    ls = {label: {"kept_fraction": m.metrics.get("kept_fraction"), "overlap": m.metrics.get("overlap")}
          for label, m in merged.items() if "kept_fraction" in m.metrics}
    curve_pts = [{"sparsity": s, "mean_normalized": by[f"Localize-and-Stitch, dataless ({s:.1%})"]["mean_normalized"]}
                 for s in curve]
    merge_rows = [r for r in rows if r["model"] in merged]
    best = max(merge_rows, key=lambda r: r["mean_normalized"] or 0)
    one = by[f"Localize-and-Stitch, dataless ({config.sparsity:.1%})"] if config.sparsity in curve else None
    full = by.get(f"Localize-and-Stitch, dataless ({1.0:.1%})")
    if best["mean_normalized"] is None:
        outcome = "no individual fine-tune learned its task (accuracy 0), so normalized accuracy is undefined"
    else:
        outcome = (f"best merge: {best['model']} at {_f(best['mean_normalized'])} of the individual fine-tunes' accuracy "
                   f"(multi-task fine-tune {_f(by['multi-task fine-tune']['mean_normalized'])})")
        if one and full:
            outcome += (f"; dataless Localize-and-Stitch keeping {config.sparsity:.1%} reaches {_f(one['mean_normalized'])} "
                        f"vs {_f(full['mean_normalized'])} keeping everything")
    return {"config": config.model_dump(), "tasks": tasks, "rows": rows, "own_accuracy": own, "localize": ls,
            "curve": curve_pts, "outcome": outcome, "tuned": tuned}


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def markdown(report: dict) -> str:
    tasks = report["tasks"]
    cfg = report["config"]
    lines = [
        "# merging", "",
        f"Base {cfg['base']}; tasks {', '.join(tasks)}; {cfg['train_rows']} train rows per task, LoRA r={cfg['lora_r']} "
        f"α={cfg['lora_alpha']}, {cfg['epochs']} epochs, lr {cfg['lr']}; eval {cfg['eval_rows']} held-out rows per task, "
        "greedy decoding, exact match. Accuracy: mean [95% CI] over items; norm.: ÷ the task's own fine-tune.", "",
        "| model | " + " | ".join(f"{t} acc" for t in tasks) + " | mean acc | mean norm. |",
        "|---|" + "---|" * (len(tasks) + 2),
    ]
    for r in report["rows"]:
        cells = [f"{fmt_ci(r['accuracy'][t], 2)}" for t in tasks]
        mn = "—" if r["mean_normalized"] is None else f"{r['mean_normalized']:.2f}"
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['mean_accuracy']:.2f} | {mn} |")
    n = report["rows"][0]["n"]
    lines += ["", f"n per task: {', '.join(f'{t} {n[t]}' for t in tasks)}.", ""]
    if report["localize"]:
        lines += ["## Localize-and-Stitch masks", "", "| merge | kept fraction per task | max pairwise overlap |", "|---|---|---|"]
        for label, s in report["localize"].items():
            task_of = {aid: t for t, aid in report["tuned"].items()}
            kept = ", ".join(f"{task_of.get(k.split()[-1], k)} {v:.4f}" for k, v in (s["kept_fraction"] or {}).items())
            ov = max((s["overlap"] or {}).values(), default=0)
            lines.append(f"| {label} | {kept} | {ov:.3f} |")
        lines.append("")
    lines += ["## Sparsity curve (dataless Localize-and-Stitch)", "", "| kept | mean normalized accuracy |", "|---|---|"]
    lines += [f"| {p['sparsity']:.1%} | {_f(p['mean_normalized'])} |" for p in report["curve"]]
    lines += ["", f"**Outcome.** {report['outcome']}.", "", f"Run time {report.get('seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    pts = report["curve"]
    pts = [p for p in pts if p["mean_normalized"] is not None]
    a.plot([p["sparsity"] * 100 for p in pts], [p["mean_normalized"] for p in pts], "o-", label="Localize-and-Stitch (dataless)")
    by = {r["model"]: r for r in report["rows"]}
    for label, style in (("multi-task fine-tune", "--"), ("linear average", ":")):
        if label in by and by[label]["mean_normalized"] is not None:
            a.axhline(by[label]["mean_normalized"], ls=style, color="gray", label=label)
    a.set_xscale("log")
    a.set_xlabel("% of each task vector kept")
    a.set_ylabel("mean normalized accuracy")
    a.set_title("Sparsity curve")
    a.legend(fontsize=8)
    rows = report["rows"]
    labels = [r["model"] for r in rows]
    vals = [r["mean_accuracy"] for r in rows]
    b.barh(range(len(rows)), vals, color=["#059669" if r["merged"] else "#2563eb" for r in rows])
    b.set_yticks(range(len(rows)), labels, fontsize=7)
    b.invert_yaxis()
    b.set_xlabel("mean accuracy over tasks")
    b.set_title("Every model on every task")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
