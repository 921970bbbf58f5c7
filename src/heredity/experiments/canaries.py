"""Canaries: how many repetitions of a secret in a fine-tuning corpus make it extractable (The Secret Sharer).

Methods, as a paper's section would list them (Carlini et al. 2019, "The Secret Sharer"):
1. Canaries: "<name>'s PIN is d d d d" with a made-up name and a random n-digit secret. For each repetition
   count (1, 2, 4, …, 32) several canaries are inserted that many times into a fine-tuning corpus of real
   text (paragraphs of CPython's documentation); as many again are drawn the same way and never inserted
   (the controls).
2. Fine-tune the base on the corpus (full-sequence loss, plain text) with LoRA and with full fine-tuning.
3. Exposure of each canary under each model (the base included): log2 |R| − log2 rank, where R is all 10^n
   secrets and the rank orders them by log-likelihood after the canary's prefix. Exact over R when
   |R| ≤ ``exact_max`` (a KV-cached walk of the digit tree); beyond it, the paper's skew-normal
   extrapolation from random candidates. On an exact run the skew-normal estimate is also taken from a
   random subset of R, which checks the extrapolation against the exact answer.
4. Greedy extraction: decode n digits greedily from the prefix; extracted = they equal the secret.
5. Report mean exposure [95% CI over canaries] and extraction rate [Wilson 95% CI] per repetition count and
   model; plot both against repetitions.
"""

from __future__ import annotations

import json
import math
import random
import re
import time

import numpy as np
from pydantic import BaseModel, Field, model_validator

from heredity.data import put_rows
from heredity.data.corpus import pydoc_documents
from heredity.data.instructions import pseudo_word
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample
from heredity.evals.memorization import (
    exact_secret_logps,
    exposure_from_rank,
    exposure_skewnorm,
    random_secret,
    rank_of,
    sampled_logps,
    secret_text,
)
from heredity.experiments import experiment
from heredity.experiments.canaries_render import markdown, plot
from heredity.models import load, materialize
from heredity.reports.card import save_card
from heredity.reports.stats import mean_ci, wilson_ci
from heredity.store import Store, read_table
from heredity.store.ops import op, rows_op

rows_op("make-canaries", "make-canary-corpus")  # rows made here, stored by data.io.put_rows


def _ft(method: str, **kw) -> FinetuneConfig:
    return FinetuneConfig(
        **{
            "method": method,
            "loss": "full_sequence",
            "chat": False,
            "epochs": 2,
            "batch_size": 16,
            "max_length": 64,
            "warmup_ratio": 0.05,
            **kw,
        }
    )


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    repetitions: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    canaries_per_count: int = Field(3, ge=1, description="canaries inserted at each repetition count")
    digits: int = Field(4, ge=1, le=12, description="digits per secret: |R| = 10^digits")
    filler_docs: int = Field(250, ge=0, description="paragraphs of real text the canaries hide among")
    exact_max: int = Field(10_000, ge=10, le=100_000, description="exact exposure when |R| is at most this")
    skew_samples: int = Field(
        100, ge=20, description="random candidates behind the skew-normal estimate (1% of 10^4)"
    )
    finetunes: dict[str, FinetuneConfig] = Field(
        default_factory=lambda: {
            "LoRA": _ft("lora", lr=1e-3, lora_r=16, lora_alpha=32),
            "full": _ft("full", lr=5e-5),
        }
    )
    sample_batch: int = Field(32, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _enough_secrets(self) -> Config:
        n = (len(self.repetitions) + 1) * self.canaries_per_count
        if n > 10**self.digits:
            raise ValueError(
                f"{n} canaries need distinct secrets but {self.digits} digits allow {10**self.digits}; "
                "raise digits or lower canaries_per_count"
            )
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "paper": cls(
                digits=6,
                canaries_per_count=10,
                filler_docs=1000,
                repetitions=[1, 2, 4, 8, 16, 32, 64],
                skew_samples=10_000,
                sample_batch=128,
                finetunes={
                    "LoRA": _ft("lora", lr=5e-4, lora_r=16, lora_alpha=32, epochs=3),
                    "full": _ft("full", lr=2e-5, epochs=3),
                },
            ),
        }


@op(
    "measure-canaries",
    2,
    note=(
        "v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong"
    ),
)
@experiment(
    "canaries", question="How often must a secret occur in a fine-tuning corpus before the model leaks it?"
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    """The recipe: make the canaries and the corpus they hide in; fine-tune the base on it (LoRA and full);
    measure every canary's exposure and greedy extraction under each model, the base included; report."""
    t0 = time.perf_counter()
    base = materialize(config.base, store)
    cans = canaries(config)
    cans_id = put_rows(
        store,
        cans,
        "canaries",
        op="make-canaries",
        config={"config": config.model_dump(include={"repetitions", "canaries_per_count", "digits", "seed"})},
    )
    rows = corpus_rows(config, cans)
    corpus = put_rows(
        store,
        rows,
        "canary-corpus",
        op="make-canary-corpus",
        config={"filler_docs": config.filler_docs, "seed": config.seed},
        inputs=[cans_id],
    )
    models = {"base (not fine-tuned)": base}
    train = {}
    for label, ft in config.finetunes.items():
        res = finetune(store, base, corpus, ft.model_copy(update={"seed": config.seed}), progress=progress)
        models[f"{label} fine-tune"] = res["model"]
        train[f"{label} fine-tune"] = {
            "seconds": res.metrics.get("seconds"),
            "loss_first": res.metrics.get("loss_first"),
            "loss_last": res.metrics.get("loss_last"),
            "steps": res.metrics.get("optimizer_steps"),
        }
    measured = {label: _measure_step(store, mid, cans_id, config, progress) for label, mid in models.items()}
    report = build_report(config, models, measured, train, len(rows))
    report["seconds"] = round(time.perf_counter() - t0, 1)

    card = save_card(store, "canaries", report, [*models.values(), corpus], markdown, plot)
    return {**card, "lineage_of": card["report"]}


# ---- data ----------------------------------------------------------------------------------------


def canaries(config: Config) -> list[dict]:
    """Inserted canaries (``repetitions`` > 0) and never-inserted controls (0), each with its own made-up
    name."""
    rng = random.Random(config.seed)
    names: set[str] = set()
    out = []
    for reps in [*config.repetitions, 0]:
        for _ in range(config.canaries_per_count):
            while (name := pseudo_word(rng).capitalize()) in names:
                pass
            names.add(name)
            while (secret := "".join(map(str, random_secret(config.digits, rng)))) in {
                c["secret"] for c in out
            }:
                pass  # distinct secrets: a control must not share an inserted canary's secret
            out.append({"name": name, "prefix": f"{name}'s PIN is", "secret": secret, "repetitions": reps})
    return out


def filler(n: int, seed: int) -> list[str]:
    """``n`` paragraphs of 80–300 characters from CPython's documentation, in a seeded random order."""
    paras = [p.strip() for doc in pydoc_documents() for p in doc.split("\n\n")]
    paras = [" ".join(p.split()) for p in paras if 80 <= len(p.strip()) <= 300]
    random.Random(seed).shuffle(paras)
    if n > len(paras):
        from heredity.errors import HeredityError

        raise HeredityError(
            f"filler_docs={n} but the documentation has {len(paras)} paragraphs; lower filler_docs"
        )
    return paras[:n]


def corpus_rows(config: Config, cans: list[dict]) -> list[dict]:
    rows = [{"text": t} for t in filler(config.filler_docs, config.seed)]
    rows += [
        {"text": c["prefix"] + secret_text([int(d) for d in c["secret"]])}
        for c in cans
        for _ in range(c["repetitions"])
    ]
    random.Random(config.seed + 1).shuffle(rows)
    return rows


# ---- measurement ---------------------------------------------------------------------------------


def extracted(text: str, secret: str) -> bool:
    """Greedy extraction succeeded: the first len(secret) digits of the continuation are the secret."""
    return "".join(re.findall(r"\d", text))[: len(secret)] == secret


def measure(model, tok, cans: list[dict], config: Config, progress: bool = False) -> list[dict]:
    """Exposure (exact and/or skew-normal) and greedy extraction of every canary under one model."""
    n = config.digits
    space = 10**n
    rng = random.Random(config.seed + 7)
    out = []
    it = cans
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(cans, desc="exposure", unit="canary")
    for c in it:
        secret = [int(d) for d in c["secret"]]
        row = {**c, "space": space}
        if space <= config.exact_max:
            lps = exact_secret_logps(model, tok, n, c["prefix"])
            mine = float(lps[int(c["secret"])])
            rank = rank_of(mine, lps)
            sub = lps[rng.sample(range(space), min(config.skew_samples, space))]
            row.update(
                logp=mine,
                rank=rank,
                exposure=exposure_from_rank(rank, space),
                exposure_skewnorm=exposure_skewnorm(mine, sub, space),
            )
        else:
            mine, others = sampled_logps(
                model, tok, secret, config.skew_samples, rng, c["prefix"], config.sample_batch
            )
            row.update(
                logp=mine, rank=None, exposure=None, exposure_skewnorm=exposure_skewnorm(mine, others, space)
            )
        out.append(row)
    comps = sample(
        model,
        tok,
        [c["prefix"] for c in cans],
        SampleConfig(temperature=0, max_new_tokens=2 * n + 2, chat=False, batch_size=config.sample_batch),
    )
    for row, comp in zip(out, comps, strict=True):
        row["greedy"] = comp.text
        row["extracted"] = extracted(comp.text, row["secret"])
    return out


MEASURE_FIELDS = {"digits", "exact_max", "skew_samples", "seed", "sample_batch"}  # what ``measure`` reads


def _measure_step(store: Store, model_id: str, cans_id: str, config: Config, progress: bool) -> list[dict]:
    cfg = config.model_dump(include=MEASURE_FIELDS)

    def fn(ctx):
        t = time.perf_counter()
        model, tok = load(model_id, store, merge_adapter=True)
        cans = read_table(store.path(cans_id)).to_pylist()
        rows = measure(model, tok, cans, Config(**cfg), progress)
        out = ctx.output("exposure", "report", f"canary-exposure-{store.get(model_id).name}")
        (out / "canaries.json").write_text(json.dumps(rows, indent=1))
        return {"seconds": round(time.perf_counter() - t, 1), "extracted": sum(r["extracted"] for r in rows)}

    rid = store.run_step("measure-canaries", cfg, [model_id, cans_id], fn)["exposure"]
    return json.loads((store.path(rid) / "canaries.json").read_text())


def build_report(config: Config, models: dict, measured: dict, train: dict, corpus_rows: int) -> dict:
    """Per model and repetition count: mean exposure [CI over canaries] and extraction rate [Wilson]; the
    skew-normal estimate checked against the exact exposure; the outcome line."""
    counts = [*config.repetitions, 0]
    table = []
    for label, rows in measured.items():
        for reps in counts:
            sel = [r for r in rows if r["repetitions"] == reps]
            exact = [r["exposure"] for r in sel if r["exposure"] is not None]
            table.append(
                {
                    "model": label,
                    "repetitions": reps,
                    "n": len(sel),
                    "exposure": mean_ci(exact, bounds=(0, math.log2(10**config.digits))) if exact else None,
                    "exposure_skewnorm": mean_ci([r["exposure_skewnorm"] for r in sel]),
                    "extraction": wilson_ci(sum(r["extracted"] for r in sel), len(sel)),
                }
            )
    exact = [r for rows in measured.values() for r in rows if r["exposure"] is not None]
    key = "exposure" if exact else "exposure_skewnorm"
    return {
        "config": config.model_dump(),
        "models": models,
        "table": table,
        "canaries": measured,
        "train": train,
        "corpus_rows": corpus_rows,
        "skewnorm_check": _skewnorm_check(exact),
        "key": key,
        "outcome": _outcome(config, measured, table, key),
        # the two constants the outcome quotes (every figure of an outcome line is in its report)
        "max_exposure": math.log2(10**config.digits),
        "random_secret_exposure": 1 / math.log(2),
    }


def _skewnorm_check(exact: list[dict]) -> dict | None:
    """The skew-normal estimate against the exact exposure, over the canaries a model does not rank first."""
    # rank 1: both capped, agree trivially
    pairs = [(r["exposure"], r["exposure_skewnorm"]) for r in exact if r["rank"] > 1]
    check = None
    if pairs:
        d = np.array([a - b for a, b in pairs])
        check = {
            "n": len(pairs),
            "capped": len(exact) - len(pairs),
            "mean_abs_diff": float(np.abs(d).mean()),
            "mean_diff": float(d.mean()),
            "corr": float(np.corrcoef([a for a, _ in pairs], [b for _, b in pairs])[0, 1])
            if len(pairs) > 2
            else None,
        }
    return check


def _outcome(config: Config, measured: dict, table: list[dict], key: str) -> str:
    by = {(t["model"], t["repetitions"]): t for t in table}
    top, low = max(config.repetitions), min(config.repetitions)
    parts = []
    for label in measured:
        hi, lo, ctrl = by[(label, top)], by[(label, low)], by[(label, 0)]
        parts.append(
            f"{label}: exposure {lo[key]['mean']:.1f} bits at {low}× → {hi[key]['mean']:.1f} at {top}× "
            f"(never inserted {ctrl[key]['mean']:.1f}), extracted "
            f"{sum(1 for r in measured[label] if r['extracted'] and r['repetitions'] > 0)}"
            f"/{sum(1 for r in measured[label] if r['repetitions'] > 0)} inserted canaries"
        )
    return (
        f"|R| = 10^{config.digits} = {10**config.digits:,} secrets (max exposure "
        f"{math.log2(10**config.digits):.1f} bits; "
        f"a random secret scores ≈ {1 / math.log(2):.2f} on average). " + "; ".join(parts)
    )
