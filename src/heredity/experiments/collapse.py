"""Model collapse: train each generation on the previous one's text (Shumailov et al. 2024; Gerstgrasser et
al. 2024).

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
4. Every model: perplexity on the held-out real text (mean NLL over all non-overlapping windows); on its own
   samples, distinct n-grams and how much of the real text's token-frequency tail still occurs (types outside
   the real text's top ``1 − tail_fraction`` of mass).
5. Replication: the whole chain (generation 0, then every regime's generations) is run for ``seeds``
   independent training seeds (pretraining, sampling and data mixing all seeded from it). The unit of
   replication is the seed: every interval is a t interval over seeds, and replace vs accumulate at the last
   generation is a two-sided paired t-test over seeds (both regimes of one seed start from the same
   generation 0). Windows of held-out text measure one model, so they are not the unit of any test here.
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
from heredity.engine import SampleConfig, completions, sample_step
from heredity.engine.pretrain import (
    PretrainConfig,
    corpus_texts,
    pretrain_step,
    token_stream,
    train_tokenizer_step,
)
from heredity.evals.diversity import distinct_n, tail_stats
from heredity.experiments import experiment
from heredity.experiments.collapse_render import markdown, plot
from heredity.models import load
from heredity.reports.card import save_card
from heredity.reports.stats import (
    fmt_ci,
    fmt_test,
    holm,
    mean_ci,
    min_detectable,
    paired_test,
    verdict,
)
from heredity.store import Store, read_table
from heredity.store.ops import op, rows_op

rows_op("make-collapse-corpus")  # rows made here, stored by data.io.put_rows

Regime = Literal["replace", "accumulate", "keep-real"]
SEPARATOR = "<|endoftext|>"


class Config(BaseModel):
    corpus: list[str] = Field(default_factory=list, description="real text files; empty = pydoc_data.topics")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    vocab_size: int = Field(2048, ge=300)
    pretrain: PretrainConfig = Field(
        default_factory=lambda: PretrainConfig(iters=800, warmup=50, eval_every=800)
    )
    generations: int = Field(5, ge=1)
    regimes: list[Regime] = Field(default_factory=lambda: ["replace", "accumulate", "keep-real"])
    real_fraction: float = Field(
        0.1, gt=0, lt=1, description="keep-real: share of each generation's data that is real"
    )
    doc_tokens: int = Field(
        240, ge=16, description="most tokens per sampled document (it ends earlier at a separator)"
    )
    synthetic_tokens: int | None = Field(
        None, ge=1, description="tokens sampled per generation; default = the real training text's"
    )
    temperature: float = Field(1.0, gt=0)
    ngrams: list[int] = Field(default_factory=lambda: [2, 3, 4])
    tail_fraction: float = Field(0.1, gt=0, lt=1)
    seeds: int = Field(3, ge=1, description="independent chains (training seeds): the unit of replication")
    sample_batch: int = Field(64, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fits(self) -> Config:
        if self.doc_tokens + 1 > self.pretrain.max_positions:
            raise ValueError(
                f"doc_tokens {self.doc_tokens} + the separator exceed the model's context "
                f"(pretrain.max_positions {self.pretrain.max_positions}); lower doc_tokens"
            )
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            # 3 seeds × (1 + 3 regimes × 2 generations) models of 600 iterations fit the quick budget
            # (~20 min)
            "quick": cls(
                generations=2, seeds=3, pretrain=PretrainConfig(iters=600, warmup=50, eval_every=600)
            ),
            "paper": cls(
                vocab_size=8192,
                generations=10,
                doc_tokens=500,
                seeds=5,
                pretrain=PretrainConfig(
                    hidden=512,
                    layers=8,
                    heads=8,
                    intermediate=1408,
                    context=256,
                    max_positions=512,
                    iters=5000,
                    batch_size=64,
                    lr=6e-4,
                    min_lr=6e-5,
                    warmup=200,
                    eval_every=5000,
                    eval_batches=50,
                ),
                sample_batch=256,
            ),
        }


# ---- the recipe ----------------------------------------------------------------------------------


@experiment("collapse", question="What happens when each generation trains on the last one's text?")
def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    # 1. real data and the shared tokenizer
    corpus = make_corpus(store, config.corpus or None, config.val_fraction, config.seed)
    tok_id = train_tokenizer_step(store, corpus, config.vocab_size, progress)
    texts = corpus_texts(store, corpus)
    # ≈ one sampled document's length in characters
    real_chunks = chunks(texts["train"], 4 * config.doc_tokens)
    models: dict[tuple[str, int, int], str] = {}  # (regime, generation, seed index) -> model id
    train_info: dict[tuple[str, int, int], dict] = {}
    samples: dict[str, list[str]] = {}  # model id -> ids of the datasets sampled from it
    # 2-3. one independent chain per training seed: generation 0, then every regime's generations
    budget = None
    for s_i in range(config.seeds):
        budget = _chain(
            store, config, s_i, corpus, tok_id, texts, real_chunks, models, train_info, samples, progress
        )
    # 4. every model measured: held-out perplexity, and diversity and tail of its own samples
    for (_, _, s_i), mid in models.items():
        samples[mid] = samples.get(mid) or generate(store, mid, budget, config, progress, config.seed + s_i)
    metrics = {key: _measure(store, mid, corpus, samples[mid], config) for key, mid in models.items()}
    report = build_report(config, models, metrics, train_info, list(texts["train"]), tok_id, store)
    report["seconds"] = round(time.perf_counter() - t0, 1)

    card = save_card(store, "collapse", report, list(models.values()), markdown, plot)
    return {**card, "lineage_of": models[(config.regimes[0], config.generations, 0)]}


def _chain(
    store: Store,
    config: Config,
    s_i: int,
    corpus: str,
    tok_id: str,
    texts: dict,
    real_chunks: list[str],
    models: dict,
    train_info: dict,
    samples: dict,
    progress: bool,
) -> int:
    """Seed ``s_i``'s chain: generation 0 on the real text, then for each regime generations 1..k, each
    pretrained from scratch on its regime's mix of real and sampled text. Fills ``models``, ``train_info`` and
    ``samples``; returns the synthetic token budget per generation."""
    seed = config.seed + s_i
    p = config.pretrain.model_copy(update={"seed": seed})
    g0 = pretrain_step(store, corpus, tok_id, p, name=f"collapse-gen0-s{s_i}", progress=progress)
    real_tokens = g0.metrics["corpus_train_tokens"]
    budget = config.synthetic_tokens or real_tokens
    models[("real", 0, s_i)] = g0["model"]
    train_info[("real", 0, s_i)] = {
        "docs": len(texts["train"]),
        "tokens": real_tokens,
        "seconds": g0.metrics.get("seconds"),
    }
    for regime in config.regimes:
        prev, synth = g0["model"], []
        for k in range(1, config.generations + 1):
            samples[prev] = samples.get(prev) or generate(store, prev, budget, config, progress, seed)
            synth.append(_texts(store, samples[prev]))
            docs = training_docs(
                regime,
                texts["train"] if regime == "accumulate" else real_chunks,
                synth,
                config.real_fraction,
                seed * 1000 + k,
            )
            cid = _generation_corpus(store, config, regime, k, s_i, docs, texts["val"], corpus, samples[prev])
            res = pretrain_step(
                store, cid, tok_id, p, name=f"collapse-{regime}-gen{k}-s{s_i}", progress=progress
            )
            prev = models[(regime, k, s_i)] = res["model"]
            train_info[(regime, k, s_i)] = {
                "docs": len(docs),
                "tokens": res.metrics.get("corpus_train_tokens"),
                "seconds": res.metrics.get("seconds"),
            }
    return budget


def _generation_corpus(
    store: Store,
    config: Config,
    regime: Regime,
    k: int,
    s_i: int,
    docs: list[str],
    val: list[str],
    corpus: str,
    sampled: list[str],
) -> str:
    """Generation k's corpus: its training documents, and the real held-out documents as validation text."""
    rows = [{"text": d, "split": "train"} for d in docs] + [{"text": d, "split": "val"} for d in val]
    return put_rows(
        store,
        rows,
        f"collapse-{regime}-gen{k}-s{s_i}",
        op="make-collapse-corpus",
        config={
            "regime": regime,
            "generation": k,
            "real_fraction": config.real_fraction,
            "seed": config.seed + s_i,
        },
        inputs=[corpus, *sampled],
    )


# ---- data ----------------------------------------------------------------------------------------


def chunks(docs: list[str], chars: int) -> list[str]:
    """Documents cut at paragraph boundaries into pieces of about ``chars`` characters (so a share of real
    text can be drawn at a finer grain than whole documents)."""
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


def training_docs(
    regime: Regime, real: list[str], synthetic: list[list[str]], real_fraction: float, seed: int
) -> list[str]:
    """Generation k's training documents; ``synthetic[i]`` is the text sampled from generation i (newest
    last)."""
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


def generate(
    store: Store, model_id: str, tokens: int, config: Config, progress: bool, seed: int | None = None
) -> list[str]:
    """Documents sampled from a model (temperature ``config.temperature``, from the separator, each ending
    where the model ends a document or at ``doc_tokens``) until they hold ``tokens`` tokens; the sampling
    steps' ids."""
    ids, got = [], 0
    for rnd in range(20):
        if got >= tokens:
            break
        n = max(1, math.ceil((tokens - got) / config.doc_tokens * (1.0 if rnd == 0 else 1.5)))
        did = sample_step(
            store,
            model_id,
            [SEPARATOR],
            SampleConfig(
                chat=False,
                n=n,
                temperature=config.temperature,
                max_new_tokens=config.doc_tokens,
                seed=(config.seed if seed is None else seed) * 1000 + rnd,
                batch_size=config.sample_batch,
                stop=[SEPARATOR],
            ),
            name=f"samples-{store.get(model_id).name}",
            progress=progress,
        )
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


@op("measure-collapse", 1)
def _measure(store: Store, model_id: str, corpus_id: str, samples: list[str], config: Config) -> dict:
    context, ngrams, tail_fraction = config.pretrain.context, config.ngrams, config.tail_fraction
    cfg = {"context": context, "ngrams": ngrams, "tail_fraction": tail_fraction}

    def fn(ctx):
        model, tok = load(model_id, store)
        texts = corpus_texts(store, corpus_id)
        nll = window_nll(model, token_stream(tok, texts["val"]), context)
        real = Counter(token_stream(tok, texts["train"]).tolist())
        docs = [tok(t, add_special_tokens=False)["input_ids"] for t in _texts(store, samples)]
        tail = tail_stats([t for d in docs for t in d], real, tail_fraction)
        res = {
            "nll": nll,
            "distinct": {str(n): distinct_n(docs, n) for n in ngrams},
            "tail": tail,
            "sample_tokens": sum(map(len, docs)),
        }
        out = ctx.output("metrics", "report", f"collapse-metrics-{store.get(model_id).name}")
        (out / "metrics.json").write_text(json.dumps(res))
        return {"val_perplexity": round(math.exp(sum(nll) / len(nll)), 3)}

    rid = store.run_step("measure-collapse", cfg, [model_id, corpus_id, *samples], fn)["metrics"]
    return json.loads((store.path(rid) / "metrics.json").read_text())


# ---- statistics and the report -------------------------------------------------------------------


def build_report(
    config: Config,
    models: dict,
    metrics: dict,
    train_info: dict,
    real_docs: list[str],
    tok_id: str,
    store: Store,
) -> dict:
    reference = _reference(config, real_docs, tok_id, store)
    seeds = sorted({s for _, _, s in models})
    cells = sorted(
        {(r, k) for r, k, _ in models},
        key=lambda x: (x[1] > 0, config.regimes.index(x[0]) if x[0] in config.regimes else -1, x[1]),
    )
    rows = [_row(config, regime, k, seeds, models, metrics, train_info) for regime, k in cells]
    by = {(r["regime"], r["generation"]): r for r in rows}
    g0 = by[("real", 0)]
    last = config.generations
    unit = "training seeds (independent chains)"
    parts = []
    for regime in config.regimes:
        r = by[(regime, last)]
        pp = r["perplexity"]
        parts.append(
            f"{regime}: perplexity {g0['perplexity']['mean']:.1f} → {fmt_ci(pp, 1)} at generation {last}"
        )
    outcome = "; ".join(parts) + f" (mean over {len(seeds)} seeds, 95% t interval over seeds)"
    comparisons, replace_vs_accumulate = _comparisons(config, metrics, seeds, unit)
    if replace_vs_accumulate is not None:
        outcome += _replace_vs_accumulate(
            replace_vs_accumulate, comparisons[-1]["p_holm"], len(comparisons), last
        )
    return {
        "config": config.model_dump(),
        "rows": rows,
        "reference": reference,
        "comparisons": comparisons,
        "unit": unit,
        "outcome": outcome,
    }


def _reference(config: Config, real_docs: list[str], tok_id: str, store: Store) -> dict:
    """The real training text's distinct n-grams (over chunks of ``doc_tokens``) and token types."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(store.path(tok_id))
    real_ids = [tok(d, add_special_tokens=False)["input_ids"] for d in real_docs]
    flat = [t for d in real_ids for t in d]
    real_chunks = [flat[i : i + config.doc_tokens] for i in range(0, len(flat), config.doc_tokens)]
    return {
        "distinct": {str(n): distinct_n(real_chunks, n) for n in config.ngrams},
        "tail": tail_stats(flat, Counter(flat), config.tail_fraction),
    }


def _per_seed(metrics: dict, seeds: list[int], regime: str, k: int, f) -> list:
    """``f`` of each seed's model of one regime and generation."""
    return [f(metrics[(regime, k, s)]) for s in seeds if (regime, k, s) in metrics]


def _mean_nll(m: dict) -> float:
    return sum(m["nll"]) / len(m["nll"])


def _row(
    config: Config, regime: str, k: int, seeds: list[int], models: dict, metrics: dict, train_info: dict
) -> dict:
    """One regime and generation: every measure as a mean over seeds with a 95% t interval over seeds."""

    def per_seed(f):
        return _per_seed(metrics, seeds, regime, k, f)

    nll = mean_ci(per_seed(_mean_nll))
    return {
        "regime": regime,
        "generation": k,
        "ids": [models[(regime, k, s)] for s in seeds],
        "seeds": len(seeds),
        "nll": nll,
        "perplexity": {
            "mean": math.exp(nll["mean"]),
            "lo": math.exp(nll["lo"]),
            "hi": math.exp(nll["hi"]),
        },
        "perplexity_per_seed": [round(math.exp(x), 3) for x in per_seed(_mean_nll)],
        "distinct": {
            str(n): mean_ci(per_seed(lambda m, n=n: m["distinct"][str(n)]), bounds=(0, 1))
            for n in config.ngrams
        },
        "tail_coverage": mean_ci(
            per_seed(lambda m: m["tail"]["tail_coverage"]),
            bounds=(0, 1),
            allow_binary=True,
        ),
        "types": mean_ci(per_seed(lambda m: m["tail"]["types"])),
        "train": {
            "docs": [train_info[(regime, k, s)]["docs"] for s in seeds],
            "tokens": [train_info[(regime, k, s)]["tokens"] for s in seeds],
        },
    }


def _comparisons(
    config: Config, metrics: dict, seeds: list[int], unit: str
) -> tuple[list[dict], dict | None]:
    """Each regime's last generation vs generation 0 and, with both regimes, replace vs accumulate at the last
    generation: two-sided paired t-tests over seeds on the mean NLL, Holm-adjusted over all of them. Returns
    the comparisons and the replace-vs-accumulate test (None without both regimes)."""
    last = config.generations
    comparisons = []
    for regime in config.regimes:  # each regime's last generation vs generation 0, paired by seed
        t = paired_test(
            _per_seed(metrics, seeds, regime, last, _mean_nll),
            _per_seed(metrics, seeds, "real", 0, _mean_nll),
            unit,
        )
        comparisons.append({"a": f"{regime} gen {last}", "b": "real gen 0", "metric": "mean NLL (nats)", **t})
    ra = None
    if "replace" in config.regimes and "accumulate" in config.regimes:
        ra = paired_test(
            _per_seed(metrics, seeds, "replace", last, _mean_nll),
            _per_seed(metrics, seeds, "accumulate", last, _mean_nll),
            unit,
        )
        comparisons.append(
            {"a": f"replace gen {last}", "b": f"accumulate gen {last}", "metric": "mean NLL (nats)", **ra}
        )
    for c, pa in zip(comparisons, holm([c["p"] for c in comparisons]), strict=True):
        c["p_holm"] = pa
    return comparisons, ra


def _replace_vs_accumulate(t: dict, p_holm: float, family: int, last: int) -> str:
    """The outcome's clause on replace vs accumulate at the last generation (published: replace is worse)."""
    v = verdict(t, expected=+1, p=p_holm)
    said = fmt_test(t, 3, "f", p=p_holm)
    if v["result"] == "as hypothesised":
        return (
            f". At generation {last} replace is worse than accumulate on held-out real text ({said}), "
            "as published"
        )
    if v["result"] == "opposite":
        return (
            f". At generation {last} accumulate is worse than replace ({said}), against the published result"
        )
    if v["result"] == "null":
        mde = min_detectable(t["sd"], t["n"], family=family)
        return (
            f". Replace and accumulate are not separated at generation {last} ({said}; with {t['n']} seeds "
            f"the test had 80% power only for |Δ NLL| ≥ {mde:.2g})"
        )
    return f". Replace vs accumulate at generation {last} is undetermined ({said}): run with seeds ≥ 2"
