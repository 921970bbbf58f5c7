"""Model collapse: train each generation on the previous one's text (Shumailov et al. 2024; Gerstgrasser et al. 2024).

Methods, as a paper's section would list them:
1. Real data: the chatgpt pipeline's pretraining corpus (CPython's documentation by default), whole documents
   held out as real validation text; its byte-level BPE tokenizer is shared by every generation.
2. Generation 0: a small Llama-architecture model pretrained from scratch on the real training text.
3. Generation k+1 is pretrained from scratch, with the same budget (iterations, batch, shape), on text sampled
   from generation k (temperature 1, from the document separator, each document ending where the model ends
   it), as many tokens as the real training text holds, in three regimes:
   * replace: only the newest synthetic text (as much as the real corpus holds);
   * accumulate: the real text plus every earlier generation's synthetic text (data grows);
   * keep-real: the newest synthetic text, with ``real_fraction`` of it swapped for real text.
4. Every model: perplexity on the held-out real text (all non-overlapping windows; 95% CI over windows);
   on its own samples, distinct n-grams and how much of the real text's token-frequency tail still occurs
   (types outside the real text's top ``1 − tail_fraction`` of mass). Control: generation 0 retrained
   with another seed (the seed-to-seed spread of perplexity). Replace vs accumulate at the last generation:
   a paired test over the same held-out windows (windows are neighbours in text, so the per-model
   intervals are somewhat too narrow; the paired test is the comparison to read).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from typing import Literal

import torch
from pydantic import BaseModel, Field, model_validator

from heredity.data import put_rows
from heredity.data.corpus import make_corpus
from heredity.data.io import rows_digest
from heredity.engine import SampleConfig, completions, sample_step
from heredity.engine.pretrain import (
    PretrainConfig,
    corpus_texts,
    pretrain_step,
    token_stream,
    train_tokenizer_step,
)
from heredity.evals.diversity import distinct_n, tail_stats
from heredity.models import load
from heredity.reports.card import save_card, yerr
from heredity.reports.stats import mean_ci, paired_p
from heredity.store import Store, read_table

Regime = Literal["replace", "accumulate", "keep-real"]
SEPARATOR = "<|endoftext|>"


class Config(BaseModel):
    corpus: list[str] = Field(default_factory=list, description="real text files; empty = pydoc_data.topics")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    vocab_size: int = Field(2048, ge=300)
    pretrain: PretrainConfig = Field(default_factory=lambda: PretrainConfig(iters=800, warmup=50, eval_every=800))
    generations: int = Field(5, ge=1)
    regimes: list[Regime] = Field(default_factory=lambda: ["replace", "accumulate", "keep-real"])
    real_fraction: float = Field(0.1, gt=0, lt=1, description="keep-real: share of each generation's data that is real")
    doc_tokens: int = Field(240, ge=16, description="most tokens per sampled document (it ends earlier at a separator)")
    synthetic_tokens: int | None = Field(None, ge=1, description="tokens sampled per generation; default = the real training text's")
    temperature: float = Field(1.0, gt=0)
    ngrams: list[int] = Field(default_factory=lambda: [2, 3, 4])
    tail_fraction: float = Field(0.1, gt=0, lt=1)
    seed_control: bool = Field(True, description="also train generation 0 with seed + 1")
    sample_batch: int = Field(64, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fits(self) -> Config:
        if self.doc_tokens + 1 > self.pretrain.max_positions:
            raise ValueError(f"doc_tokens {self.doc_tokens} + the separator exceed the model's context "
                             f"(pretrain.max_positions {self.pretrain.max_positions}); lower doc_tokens")
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "paper": cls(vocab_size=8192, generations=10, doc_tokens=500,
                         pretrain=PretrainConfig(hidden=512, layers=8, heads=8, intermediate=1408, context=256, max_positions=512,
                                                 iters=5000, batch_size=64, lr=6e-4, min_lr=6e-5, warmup=200, eval_every=5000,
                                                 eval_batches=50),
                         sample_batch=256),
        }


# ---- data ----------------------------------------------------------------------------------------


def chunks(docs: list[str], chars: int) -> list[str]:
    """Documents cut at paragraph boundaries into pieces of about ``chars`` characters (so a share of real text
    can be drawn at a finer grain than whole documents)."""
    out = []
    for d in docs:
        cur = ""
        for p in d.split("\n\n"):
            cur = f"{cur}\n\n{p}" if cur else p
            if len(cur) >= chars:
                out.append(cur)
                cur = ""
        if cur:
            out.append(cur)
    return out


def training_docs(regime: Regime, real: list[str], synthetic: list[list[str]], real_fraction: float, seed: int) -> list[str]:
    """Generation k's training documents; ``synthetic[i]`` is the text sampled from generation i (newest last)."""
    if regime == "replace":
        return list(synthetic[-1])
    if regime == "accumulate":
        return [*real, *(d for gen in synthetic for d in gen)]
    rng = random.Random(seed)
    keep_synth = round(len(synthetic[-1]) * (1 - real_fraction))
    real_chars = sum(map(len, synthetic[-1])) * real_fraction
    pieces, n = [], 0
    for c in rng.sample(real, len(real)):
        if n >= real_chars:
            break
        pieces.append(c)
        n += len(c)
    return [*synthetic[-1][:keep_synth], *pieces]


def generate(store: Store, model_id: str, tokens: int, config: Config, progress: bool) -> list[str]:
    """Documents sampled from a model (temperature ``config.temperature``, from the separator, each ending where
    the model ends a document or at ``doc_tokens``) until they hold ``tokens`` tokens; the sampling steps' ids."""
    ids, got = [], 0
    for rnd in range(20):
        if got >= tokens:
            break
        n = max(1, math.ceil((tokens - got) / config.doc_tokens * (1.0 if rnd == 0 else 1.5)))
        did = sample_step(store, model_id, [SEPARATOR],
                          SampleConfig(chat=False, n=n, temperature=config.temperature, max_new_tokens=config.doc_tokens,
                                       seed=config.seed + rnd, batch_size=config.sample_batch, stop=[SEPARATOR]),
                          name=f"samples-{store.get(model_id).name}", progress=progress)
        got += sum(read_table(store.path(did)).column("n_tokens").to_pylist())
        ids.append(did)
    return ids


def _texts(store: Store, dataset_ids: list[str]) -> list[str]:
    """The sampled datasets' non-empty documents."""
    return [t for d in dataset_ids for t in completions(store, d) if t.strip()]


# ---- measurement ---------------------------------------------------------------------------------


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, context: int, batch: int = 32) -> list[float]:
    """Mean next-token NLL (nats) of every non-overlapping window of ``context + 1`` tokens."""
    n = (len(ids) - 1) // context
    out = []
    for i in range(0, n, batch):
        starts = range(i * context, min(n, i + batch) * context, context)
        x = torch.stack([ids[s : s + context] for s in starts]).to(model.device)
        y = torch.stack([ids[s + 1 : s + 1 + context] for s in starts]).to(model.device)
        logits = model(input_ids=x).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
        out += nll.tolist()
    return out


def _measure(store: Store, model_id: str, corpus_id: str, samples: list[str], config: Config) -> dict:
    cfg = {"context": config.pretrain.context, "ngrams": config.ngrams, "tail_fraction": config.tail_fraction}

    def fn(ctx):
        model, tok = load(model_id, store)
        texts = corpus_texts(store, corpus_id)
        nll = window_nll(model, token_stream(tok, texts["val"]), config.pretrain.context)
        real = Counter(token_stream(tok, texts["train"]).tolist())
        docs = [tok(t, add_special_tokens=False)["input_ids"] for t in _texts(store, samples)]
        tail = tail_stats([t for d in docs for t in d], real, config.tail_fraction)
        res = {"nll": nll, "distinct": {str(n): distinct_n(docs, n) for n in config.ngrams}, "tail": tail,
               "sample_tokens": sum(map(len, docs))}
        out = ctx.output("metrics", "report", f"collapse-metrics-{store.get(model_id).name}")
        (out / "metrics.json").write_text(json.dumps(res))
        return {"val_perplexity": round(math.exp(sum(nll) / len(nll)), 3)}

    rid = store.run_step("measure-collapse", cfg, [model_id, corpus_id, *samples], fn)["metrics"]
    return json.loads((store.path(rid) / "metrics.json").read_text())


def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    corpus = make_corpus(store, config.corpus or None, config.val_fraction, config.seed)
    tok_id = train_tokenizer_step(store, corpus, config.vocab_size, progress)
    texts = corpus_texts(store, corpus)
    real_chunks = chunks(texts["train"], 4 * config.doc_tokens)  # ≈ one sampled document's length in characters
    p = config.pretrain.model_copy(update={"seed": config.seed})
    g0 = pretrain_step(store, corpus, tok_id, p, name="collapse-gen0", progress=progress)
    real_tokens = g0.metrics["corpus_train_tokens"]
    budget = config.synthetic_tokens or real_tokens

    models: dict[tuple[str, int], str] = {("real", 0): g0["model"]}
    train_info: dict[tuple[str, int], dict] = {("real", 0): {"docs": len(texts["train"]), "tokens": real_tokens,
                                                             "seconds": g0.metrics.get("seconds")}}
    if config.seed_control:
        c = pretrain_step(store, corpus, tok_id, p.model_copy(update={"seed": config.seed + 1}), name="collapse-gen0-seed1",
                          progress=progress)
        models[("seed control", 0)] = c["model"]
        train_info[("seed control", 0)] = {"docs": len(texts["train"]), "tokens": real_tokens, "seconds": c.metrics.get("seconds")}
    samples: dict[str, list[str]] = {}
    for regime in config.regimes:
        prev, synth = g0["model"], []
        for k in range(1, config.generations + 1):
            samples[prev] = samples.get(prev) or generate(store, prev, budget, config, progress)
            synth.append(_texts(store, samples[prev]))
            docs = training_docs(regime, texts["train"] if regime == "accumulate" else real_chunks, synth,
                                 config.real_fraction, config.seed + k)
            rows = [{"text": d, "split": "train"} for d in docs] + [{"text": d, "split": "val"} for d in texts["val"]]
            cid = put_rows(store, rows, f"collapse-{regime}-gen{k}", op="make-collapse-corpus",
                           config={"regime": regime, "generation": k, "real_fraction": config.real_fraction,
                                   "rows_sha256": rows_digest(rows)}, inputs=[corpus, *samples[prev]])
            res = pretrain_step(store, cid, tok_id, p, name=f"collapse-{regime}-gen{k}", progress=progress)
            prev = models[(regime, k)] = res["model"]
            train_info[(regime, k)] = {"docs": len(docs), "tokens": res.metrics.get("corpus_train_tokens"),
                                       "seconds": res.metrics.get("seconds")}
    for mid in models.values():
        samples[mid] = samples.get(mid) or generate(store, mid, budget, config, progress)
    metrics = {key: _measure(store, mid, corpus, samples[mid], config) for key, mid in models.items()}
    real_docs = [t for t in texts["train"]]
    report = build_report(config, models, metrics, train_info, real_docs, tok_id, store)
    report["seconds"] = round(time.perf_counter() - t0, 1)

    card = save_card(store, "collapse", report, list(models.values()), markdown, plot)
    return {**card, "lineage_of": models[(config.regimes[0], config.generations)]}


def build_report(config: Config, models: dict, metrics: dict, train_info: dict, real_docs: list[str], tok_id: str,
                 store: Store) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(store.path(tok_id))
    real_ids = [tok(d, add_special_tokens=False)["input_ids"] for d in real_docs]
    flat = [t for d in real_ids for t in d]
    real_chunks = [flat[i : i + config.doc_tokens] for i in range(0, len(flat), config.doc_tokens)]
    reference = {"distinct": {str(n): distinct_n(real_chunks, n) for n in config.ngrams},
                 "tail": tail_stats(flat, Counter(flat), config.tail_fraction)}
    rows = []
    for (regime, k), mid in models.items():
        m = metrics[(regime, k)]
        nll = mean_ci(m["nll"])
        rows.append({"regime": regime, "generation": k, "id": mid, "nll": nll,
                     "perplexity": {"mean": math.exp(nll["mean"]), "lo": math.exp(nll["lo"]), "hi": math.exp(nll["hi"])},
                     "distinct": m["distinct"], "tail_coverage": m["tail"]["tail_coverage"], "types": m["tail"]["types"],
                     "entropy": m["tail"]["entropy"], "train": train_info[(regime, k)]})
    by = {(r["regime"], r["generation"]): r for r in rows}
    g0 = by[("real", 0)]
    last = config.generations
    parts = []
    for regime in config.regimes:
        r = by[(regime, last)]
        parts.append(f"{regime}: perplexity {g0['perplexity']['mean']:.1f} → {r['perplexity']['mean']:.1f} "
                     f"[{r['perplexity']['lo']:.1f}, {r['perplexity']['hi']:.1f}] at generation {last}, tail coverage "
                     f"{g0['tail_coverage']:.2f} → {r['tail_coverage']:.2f}")
    outcome = "; ".join(parts)
    if ("seed control", 0) in by:
        outcome += f" (generation 0 with another seed: perplexity {by[('seed control', 0)]['perplexity']['mean']:.1f})"
    comparisons = []
    if "replace" in config.regimes and "accumulate" in config.regimes:
        rep, acc = metrics[("replace", last)]["nll"], metrics[("accumulate", last)]["nll"]
        p_rep_worse, p_acc_worse = paired_p(rep, acc, "greater"), paired_p(acc, rep, "greater")
        comparisons.append({"a": "replace", "b": "accumulate", "generation": last, "p_a_worse": p_rep_worse,
                            "p_b_worse": p_acc_worse, "windows": len(rep)})
        if p_rep_worse < 0.05:
            outcome += (f". At generation {last} replace is worse than accumulate on held-out real text (paired over windows, "
                        f"p = {p_rep_worse:.2g}), as published")
        elif p_acc_worse < 0.05:
            outcome += (f". At generation {last} accumulate is worse than replace (paired over windows, p = {p_acc_worse:.2g}), "
                        "against the published result")
        else:
            outcome += f". Replace and accumulate are not separated at generation {last} (paired over windows, p ≥ 0.05)"
    return {"config": config.model_dump(), "rows": rows, "reference": reference, "comparisons": comparisons,
            "outcome": outcome}


def markdown(report: dict) -> str:
    cfg = report["config"]
    p = cfg["pretrain"]
    ng = cfg["ngrams"]
    lines = [
        "# collapse", "",
        f"Every generation: a {p['layers']}-layer, {p['hidden']}-wide Llama trained from scratch for {p['iters']} iterations "
        f"(batch {p['batch_size']} × {p['context']} tokens). Generation k+1 trains on documents (up to {cfg['doc_tokens']} tokens, "
        f"ending where the model ends them) sampled from generation k at temperature {cfg['temperature']}, as many tokens as the "
        "real training text: replace (only them), accumulate (real + all earlier synthetic "
        f"text), keep-real ({cfg['real_fraction']:.0%} real). Perplexity on held-out real text [95% CI over windows]; distinct "
        f"n-grams and tail coverage (share of the real text's rarest tokens, the last {cfg['tail_fraction']:.0%} of its mass, "
        "that still occur) on the model's own samples.", "",
        "| regime | gen | train tokens | val perplexity | " + " | ".join(f"distinct-{n}" for n in ng) + " | token types | tail coverage |",
        "|---|---|---|---|" + "---|" * len(ng) + "---|---|",
    ]
    ref = report["reference"]
    lines.append("| real text (reference) | — | — | — | " + " | ".join(f"{ref['distinct'][str(n)]:.3f}" for n in ng)
                 + f" | {ref['tail']['types']} | 1.00 |")
    for r in report["rows"]:
        pp = r["perplexity"]
        lines.append(f"| {r['regime']} | {r['generation']} | {r['train']['tokens']:,} | {pp['mean']:.2f} [{pp['lo']:.2f}, {pp['hi']:.2f}] | "
                     + " | ".join(f"{r['distinct'][str(n)]:.3f}" for n in ng) + f" | {r['types']} | {r['tail_coverage']:.2f} |")
    for c in report.get("comparisons", []):
        lines += ["", f"Generation {c['generation']}, paired over the same {c['windows']} held-out windows: P({c['a']} worse than "
                      f"{c['b']}) one-sided p = {c['p_a_worse']:.3g}; P({c['b']} worse than {c['a']}) p = {c['p_b_worse']:.3g}."]
    lines += ["", f"**Outcome.** {report['outcome']}.", "", f"Run time {report.get('seconds', 0):.0f} s.", "",
              "## Artifacts", ""] + [f"- {r['regime']} generation {r['generation']}: `{r['id']}`" for r in report["rows"]] + [""]
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    rows = report["rows"]
    g0 = next(r for r in rows if r["regime"] == "real")
    n = str(cfg["ngrams"][len(cfg["ngrams"]) // 2])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for i, regime in enumerate(cfg["regimes"]):
        rs = [g0] + sorted((r for r in rows if r["regime"] == regime), key=lambda r: r["generation"])
        x = [r["generation"] for r in rs]
        pp = [r["perplexity"] for r in rs]
        axes[0].errorbar(x, [q["mean"] for q in pp], yerr=yerr(pp),
                         marker="o", capsize=3, color=f"C{i}", label=regime)
        axes[1].plot(x, [r["distinct"][n] for r in rs], "o-", color=f"C{i}", label=regime)
        axes[2].plot(x, [r["tail_coverage"] for r in rs], "o-", color=f"C{i}", label=regime)
    ctrl = next((r for r in rows if r["regime"] == "seed control"), None)
    if ctrl:
        axes[0].axhline(ctrl["perplexity"]["mean"], ls=":", color="gray", label="gen 0, other seed")
    axes[1].axhline(report["reference"]["distinct"][n], ls="--", color="gray", label="real text")
    axes[0].set_ylabel("perplexity on held-out real text")
    axes[1].set_ylabel(f"distinct-{n} of the model's samples")
    axes[2].set_ylabel(f"tail coverage (rarest {cfg['tail_fraction']:.0%} of real mass)")
    axes[2].set_ylim(0, 1.05)  # a share: on an autoscaled axis, differences of 0.005 would look like a collapse
    for ax, title in zip(axes, ("Perplexity", "Diversity", "Tail of the token distribution"), strict=True):
        ax.set_xlabel("generation")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
