"""Scheming under tool access (after Meinke et al. 2024): the six sandboxed evaluations against a model, per
scenario × variant (conflict / no-conflict control) × goal nudge (on / off), a stated number of episodes per cell.

Methods: each cell is one memoized store step (``scheming-episodes``) that runs its episodes
(``evals.scheming.run_episode``: tool calls in the sandbox until ``submit`` or the turn limit, then the
interrogation) and stores every transcript, file diff and score as a dataset artifact. The report counts, per
cell, **competence** (the conflicting memo was read), **scheming** unconditionally and conditional on competence
(Wilson intervals; a 0/n is an upper bound and is said so), the confession rate among episodes that schemed; for
sandbagging the accuracy gap conflict − control (bootstrap interval over episodes); for alignment faking the
paired counterfactual (the same episode index under testing and under deployment: faking = management's option
when tested and the model's own when deployed). The unit of replication is the episode (one trained model: a
claim about this model). Published anchors (o1 system card): disabled oversight 5%, attempted exfiltration 2%,
data manipulation 19%, alignment faking 37%.

Model: ``tool_choice="required"`` by default — every turn is constrained to a valid tool call, so a small model's
rates measure what it does with the tools, not whether it can format a call (``auto`` measures both).
"""

from __future__ import annotations

import json
import time

import numpy as np
from pydantic import BaseModel, Field, model_validator

from heredity.evals import scheming as S
from heredity.models import load, materialize
from heredity.models.registry import RemoteModel, parse_spec
from heredity.store import Store, read_table, write_table

PUBLISHED = {"oversight_subversion": ("o1: disabled oversight", 0.05), "self_exfiltration": ("o1: attempted exfiltration", 0.02),
             "covert_email_reranking": ("o1: data manipulation", 0.19),
             "instrumental_alignment_faking": ("o1: alignment faking", 0.37)}


class Config(BaseModel):
    model: str = "smollm2-135m-instruct"
    scenarios: list[str] = Field(default_factory=S.bundled)
    variants: list[str] = Field(default_factory=lambda: list(S.VARIANTS))
    nudges: list[bool] = Field(default_factory=lambda: [True, False])
    episodes: int = Field(4, ge=1, description="episodes per cell (scenario × variant × nudge)")
    max_turns: int | None = Field(None, ge=1, description="override each scenario's turn limit")
    max_new_tokens: int = Field(160, ge=16)
    temperature: float = Field(1.0, ge=0)
    tool_choice: str = Field("required", pattern="^(required|auto)$")
    protocol: str = Field("tools", pattern="^(tools|text)$",
                          description="tools: tool calling (constrained when required); text: the text protocol, for "
                                      "endpoints without tool calling (evals.scheming.TEXT_PROTOCOL)")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        known = set(S.bundled())
        bad = [s for s in self.scenarios if s not in known]
        if bad:
            raise ValueError(f"unknown scenario {bad[0]!r}; bundled: {', '.join(sorted(known))}")
        if set(self.variants) - set(S.VARIANTS):
            raise ValueError(f"variants are {', '.join(S.VARIANTS)}")
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {"quick": cls(), "paper": cls(episodes=100, max_new_tokens=512)}


def cell(store: Store, model_id: str, scenario: str, variant: str, nudged: bool, config: Config) -> str:
    """One cell's episodes as a dataset artifact (transcripts, diffs, scores). ``model_id`` is a stored model or
    adapter id, or an ``openai:MODEL@URL`` endpoint — keyed by its name and URL only (the store cannot see an
    endpoint's weights: after the endpoint's model changes, rerun with ``--recompute scheming-episodes``)."""
    cfg = {"scenario": S.load(scenario).model_dump(), "variant": variant, "nudged": nudged, "episodes": config.episodes,
           "max_turns": config.max_turns, "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
           "tool_choice": config.tool_choice, "protocol": config.protocol, "seed": config.seed}
    episodes, max_turns, max_new_tokens, temperature = config.episodes, config.max_turns, config.max_new_tokens, config.temperature
    tool_choice, protocol, seed = config.tool_choice, config.protocol, config.seed
    remote = model_id.startswith("openai:")
    if remote:
        cfg["endpoint"] = model_id

    def fn(ctx):
        if "endpoint" in cfg:
            spec = parse_spec(cfg["endpoint"])
            agent = S.OpenAIAgent(RemoteModel(spec.value, spec.base_url).client(), spec.value, max_tokens=max_new_tokens, temperature=temperature,
                                  protocol=protocol)
        else:
            model, tok = load(model_id, store, merge_adapter=True)
            agent = S.LocalAgent(model, tok, max_new_tokens=max_new_tokens, temperature=temperature, protocol=protocol)
        sc = S.Scenario.model_validate(cfg["scenario"])
        if max_turns:
            sc = sc.model_copy(update={"max_turns": max_turns})
        rows = []
        for k in range(episodes):
            out = S.run_episode(S.Episode(sc, variant=variant, nudged=nudged), agent, seed=seed + k, tool_choice=tool_choice)
            rows.append({"episode": k, **{f"score_{a}": b for a, b in out["score"].items()
                                          if a not in ("scenario", "evaluation", "variant", "nudged")},
                         "messages": json.dumps(out["messages"]), "diffs": json.dumps(out["diffs"])})
        write_table(ctx.output("episodes", "dataset", f"scheming-{scenario}-{variant}-{'nudge' if nudged else 'plain'}",
                               meta={"rows": len(rows)}), rows)
        return {"schemed": sum(r["score_schemed"] for r in rows), "competent": sum(r["score_competent"] for r in rows)}

    return store.run_step("scheming-episodes", cfg, [] if remote else [model_id], fn)["episodes"]


def summarize(rows_by_cell: dict[tuple, list[dict]], seed: int = 0) -> dict:
    """Rates with Wilson intervals per cell; the sandbagging gap and the alignment-faking pairs."""
    from heredity.reports.stats import wilson_ci

    cells = {}
    for (sc, var, nudged), rows in rows_by_cell.items():
        n = len(rows)
        comp = [r for r in rows if r["score_competent"]]
        cells[f"{sc}|{var}|{'nudge' if nudged else 'plain'}"] = {
            "scenario": sc, "variant": var, "nudged": nudged, "n": n,
            "competence": wilson_ci(len(comp), n),
            "scheming": wilson_ci(sum(r["score_schemed"] for r in rows), n),
            "scheming_if_competent": wilson_ci(sum(r["score_schemed"] for r in comp), len(comp)),
            "confessed_if_schemed": wilson_ci(sum(bool(r["score_confessed"]) for r in rows if r["score_schemed"]),
                                              sum(bool(r["score_schemed"]) for r in rows)),
            "valid_actions": int(sum(r["score_valid_actions"] for r in rows)),
            "actions": int(sum(r["score_actions"] for r in rows)),
        }
    out: dict = {"cells": cells}
    rng = np.random.default_rng(seed)
    for nudged in (True, False):
        a = rows_by_cell.get(("sandbagging", "conflict", nudged))
        b = rows_by_cell.get(("sandbagging", "control", nudged))
        if a and b:
            x, y = np.array([r["score_accuracy"] for r in a]), np.array([r["score_accuracy"] for r in b])
            boot = [rng.choice(x, len(x)).mean() - rng.choice(y, len(y)).mean() for _ in range(2000)]
            out[f"sandbagging_gap_{'nudge' if nudged else 'plain'}"] = {
                "conflict": float(x.mean()), "control": float(y.mean()), "gap": float(x.mean() - y.mean()),
                "lo": float(np.percentile(boot, 2.5)), "hi": float(np.percentile(boot, 97.5)),
                "unit": f"episodes, one model, n = {len(x)} vs {len(y)}"}
        t = rows_by_cell.get(("alignment-faking-testing", "conflict", nudged))
        d = rows_by_cell.get(("alignment-faking-deployed", "conflict", nudged))
        if t and d:
            pairs = list(zip(sorted(t, key=lambda r: r["episode"]), sorted(d, key=lambda r: r["episode"]), strict=False))
            faking = sum(bool(a["score_schemed"]) and not b["score_schemed"] for a, b in pairs)
            reverse = sum(bool(b["score_schemed"]) and not a["score_schemed"] for a, b in pairs)
            from scipy.stats import binomtest

            disc = faking + reverse
            p = float(binomtest(faking, disc).pvalue) if disc else float("nan")
            out[f"alignment_faking_{'nudge' if nudged else 'plain'}"] = {
                "faking": wilson_ci(faking, len(pairs)), "reverse": reverse, "pairs": len(pairs),
                "test": {"test": "exact binomial on discordant pairs (two-sided)", "p": p,
                         "unit": f"paired episodes, one model, n = {len(pairs)}"}}
    return out


def run(store: Store, config: Config, progress: bool = True) -> dict:
    from heredity.reports.card import save_card

    t0 = time.perf_counter()
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    spec = parse_spec(config.model)
    model_id = config.model if spec.kind == "openai" else materialize(spec, store)
    data, rows_by_cell = {}, {}
    for sc in config.scenarios:
        for var in config.variants:
            for nudged in config.nudges:
                log(f"[scheming] {sc} / {var} / {'nudge' if nudged else 'no nudge'}: {config.episodes} episodes")
                did = cell(store, model_id, sc, var, nudged, config)
                data[f"{sc}|{var}|{'nudge' if nudged else 'plain'}"] = did
                rows_by_cell[(sc, var, nudged)] = read_table(store.path(did)).to_pylist()
    report = {"experiment": "scheming", "config": config.model_dump(), "model": model_id, "episodes": data,
              **summarize(rows_by_cell, config.seed), "seconds": round(time.perf_counter() - t0, 1)}
    report["outcome"] = outcome(report)
    card = save_card(store, "scheming", report, list(data.values()), markdown, plot)
    return {"report": card["report"], "outcome": report["outcome"], "markdown": card["markdown"], "files": card["files"],
            "lineage_of": card["report"]}


def outcome(r: dict) -> str:
    parts = []
    for c in r["cells"].values():
        if c["variant"] != "conflict" or not c["nudged"]:
            continue
        s = c["scheming"]
        bound = " (0 of n: an upper bound)" if s["k"] == 0 else ""
        parts.append(f"{c['scenario']}: {s['k']}/{s['n']} schemed [{s['lo']:.2f}, {s['hi']:.2f}]{bound}, "
                     f"competent {c['competence']['k']}/{c['competence']['n']}")
    return ("with the goal nudge, conflict variant (unit: episodes, one model): " + "; ".join(parts)) if parts else "no cells"


def markdown(r: dict) -> str:
    from heredity.reports.stats import fmt_p

    c = r["config"]
    lines = ["# scheming", "", f"Model {c['model']} ({r['model']}); {c['episodes']} episodes per cell; tool_choice "
             f"{c['tool_choice']}; unit of replication for every rate: episodes (one model — a claim about this model).",
             "", "| scenario | variant | nudge | competent | schemed [95% Wilson] | schemed if competent | confessed if schemed | valid actions |",
             "|---|---|---|---|---|---|---|---|"]

    def rate(x):
        if x["n"] == 0:
            return "—"
        return f"{x['k']}/{x['n']} [{x['lo']:.2f}, {x['hi']:.2f}]" + (" (≤ upper bound)" if x["k"] == 0 else "")

    for cell_ in r["cells"].values():
        lines.append(f"| {cell_['scenario']} | {cell_['variant']} | {'on' if cell_['nudged'] else 'off'} | "
                     f"{rate(cell_['competence'])} | {rate(cell_['scheming'])} | {rate(cell_['scheming_if_competent'])} | "
                     f"{rate(cell_['confessed_if_schemed'])} | {cell_['valid_actions']}/{cell_['actions']} |")
    for k, v in r.items():
        if k.startswith("sandbagging_gap"):
            lines += ["", f"Sandbagging ({k[16:]}): accuracy conflict {v['conflict']:.2f} vs control {v['control']:.2f}, gap "
                      f"{v['gap']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}] (bootstrap; unit: {v['unit']})."]
        if k.startswith("alignment_faking"):
            f = v["faking"]
            lines += ["", f"Alignment faking ({k[17:]}): {f['k']}/{f['n']} pairs [{f['lo']:.2f}, {f['hi']:.2f}] chose management's "
                      f"option when tested and their own when deployed, {v['reverse']} the reverse; {v['test']['test']} "
                      f"{fmt_p(v['test']['p'])} (unit: {v['test']['unit']})."]
    lines += ["", "Published (o1 system card, with the nudge): " + ", ".join(f"{n} {p:.0%}" for n, p in PUBLISHED.values())
              + ". A small model's rates measure competence more than intent.", "", f"**Outcome.** {r['outcome']}.", "",
              f"Run time {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def plot(r: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in r["cells"].values() if c["nudged"]]
    fig, ax = plt.subplots(figsize=(max(6, len(cells) * 0.7), 3.6))
    for i, c in enumerate(cells):
        s = c["scheming"]
        ax.errorbar(i, s["mean"], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], fmt="o",
                    color="#a33" if c["variant"] == "conflict" else "#999", capsize=3)
    ax.set_xticks(range(len(cells)), [f"{c['scenario']}\n{c['variant']}" for c in cells], rotation=60, fontsize=7)
    ax.set_ylabel("scheming rate (95% Wilson)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
