"""Synthetic data for embeddings: a language model writes the retrieval data, a sentence encoder learns from
it, and we measure what the encoder inherits from its writer (Wang et al. 2024, arXiv 2401.00368).

Methods, as a paper's section would list them:
1. Corpora with exact relevance (``data.retrieval``): the fictional fact base (one statement per fact is a
   document, a question worded unlike any statement the query) and CPython's documentation topics (a
   section is a document, a question from its heading the query), each split once into a training part and
   an evaluation part that share no entity, no documentation topic, hence no query and no document; a user's
   own BEIR-layout corpora (``beir``) are evaluated too.
2. Writer (``data.synthetic_retrieval``): step 1, the writer brainstorms retrieval tasks, one JSON object per
   sample under a JSON schema; step 2, for every training passage, with a brainstormed task assigned, it
   writes ``{query, positive, hard_negative}`` under a JSON schema. What the schema cannot save is counted.
3. Students: the bundled all-MiniLM-L6-v2 fine-tuned by sentence-transformers' trainer with
   MultipleNegativesRankingLoss (InfoNCE, in-batch + hard negatives, scale 1/τ), the task instruction as a
   query prefix (``engine.encoder``); ``seeds`` training seeds per arm (the seed orders the batches; the
   writer's data is one draw).
4. Arms, each trained on ``rows`` rows: synthetic (the full recipe); without hard negatives; without the
   instruction prefix (at training and evaluation); without the brainstorm (one generic task, the same
   passages, written again); "real" pairs written by program from the corpora's structure (the same
   passages); and two writers with a planted bias, each differing from "synthetic" in that one thing — one
   over-produces the fact base (``bias_share`` of its rows, drawn from the same pool), one swaps the capital
   and founding-year positives between a country's rows. References: the encoder untouched, and BM25.
   Optional (the ``long`` preset): other writers (``writers``: any model spec, an ``openai:`` endpoint, a
   stored fine-tune) and a writer LoRA-tuned on program-written examples of training sections the writers
   never see (``tuned_writer``), each writing the full recipe's data on the same passages (arm
   ``writer: …``); and a decoder made an encoder (``decoder``: the end-of-sequence token's last hidden
   state, LoRA, E5-mistral's recipe at small scale) trained on ``decoder_arms`` (arms ``decoder: …``, with
   the decoder untouched as a reference).
5. Measures: nDCG@10 (primary), MRR@10, recall@1/@10 per corpus, from sentence-transformers'
   InformationRetrievalEvaluator (per-query values kept); per-topic nDCG; the swap trace = the share of
   capital and founding-year queries whose first document is the same country's other attribute.
6. Statistics: per arm, the mean over training seeds with a t interval (unit: training seeds); each declared
   contrast (``holm_family``) by a paired t over seeds (the verdict, Holm-adjusted over the family; for a
   null, the smallest detectable effect at the Holm level with the t quantile of seeds − 1 degrees of
   freedom) and, beside it, a paired bootstrap over queries of the seed-averaged per-query score (unit:
   queries; a statement about these trained students only).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

from pydantic import BaseModel, Field, model_validator

from heredity.data import put_rows
from heredity.data.beir import read_beir
from heredity.data.retrieval import SWAPPED, eval_corpora, program_pairs, split_passages
from heredity.data.synthetic_retrieval import (
    EXAMPLE_SCHEMA,
    GENERIC_TASK,
    TASK_SCHEMA,
    assign_tasks,
    balanced,
    brainstorm_prompts,
    example_prompts,
    over_produce,
    parse_examples,
    parse_tasks,
    swap_attributes,
)
from heredity.engine import SampleConfig, sample_step
from heredity.engine.constrain import json_schema
from heredity.engine.encoder import EncoderConfig, finetune_encoder, retrieval_scores
from heredity.engine.finetune import FinetuneConfig, finetune
from heredity.engine.mteb_eval import mteb_scores
from heredity.engine.retrieval import BUNDLED, IRCorpus
from heredity.errors import HeredityError
from heredity.experiments import experiment
from heredity.experiments.synthetic_embeddings_render import markdown, plot
from heredity.experiments.synthetic_embeddings_stats import analyse, family
from heredity.reports.card import save_card
from heredity.reports.stats import declared_family
from heredity.store import Store, read_table
from heredity.store.ops import rows_op

rows_op(
    "make-ir-corpus", "make-retrieval-rows"
)  # evaluation corpora and each arm's training rows, stored by data.io.put_rows

ARMS = (
    "synthetic",
    "− hard negatives",
    "− instruction prefix",
    "− brainstorm",
    "program-written pairs",
    "writer over-produces facts",
    "writer swaps capital/founded",
)
# what the paper reports (MTEB average, 56 datasets; E5-mistral-7b), beside which the quick preset's small
# corpora are not comparable in level, only in direction
PUBLISHED = {
    "MTEB average, all data": 66.6,
    "MTEB average, synthetic data only": 63.1,
    "MTEB average, synthetic + MS MARCO": 64.5,
    "cost of removing the task instructions (points)": 4.2,
}


class Config(BaseModel):
    writer: str = Field("smollm2-135m-instruct", description="any model spec, or openai:NAME@URL")
    encoder: str = BUNDLED
    train_entities: int = Field(24, ge=4, description="invented countries the writer is grounded on")
    eval_entities: int = Field(60, ge=4, description="invented countries in the evaluation corpus")
    pydoc_eval_share: float = Field(0.5, gt=0, lt=1, description="documentation topics held out")
    pydoc_train: int = Field(40, ge=1, description="training documentation sections the writer is shown")
    tasks: int = Field(16, ge=1, description="brainstorm samples (step 1)")
    rows: int = Field(60, ge=4, description="training rows per arm")
    per_passage: int = Field(
        1, ge=1, description="examples the writer writes per passage (each another task)"
    )
    bias_share: float = Field(0.8, gt=0, le=1, description="the over-producing writer's share of facts")
    passage_chars: int = Field(300, ge=40, description="the writer sees a passage's first characters")
    brainstorm_temperature: float = 1.0
    write_temperature: float = 0.7
    write_max_tokens: int = Field(160, ge=16)
    sample_batch: int = Field(32, ge=1)
    finetune: EncoderConfig = Field(default_factory=lambda: EncoderConfig(epochs=3, lr=5e-5))
    seeds: int = Field(3, ge=2, description="training seeds per arm")
    beir: list[str] = Field(default_factory=list, description="BEIR-layout folders evaluated as well")
    beir_split: str = "test"
    beir_instruction: str = "Given a query, retrieve documents that answer it"
    mteb: bool = Field(
        True, description="score the beir corpora with MTEB's own pipeline too (mteb.evaluate)"
    )
    writers: list[str] = Field(
        default_factory=list,
        description="other writers (model specs, openai:NAME@URL, stored fine-tunes): arms 'writer: SPEC'",
    )
    tuned_writer: bool = Field(
        False, description="also the writer LoRA-tuned on program-written examples of held-back sections"
    )
    tuned_writer_finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(epochs=2, lr=2e-4, lora_r=16, lora_alpha=32, max_length=384)
    )
    decoder: str | None = Field(None, description="a language model made an encoder, trained on decoder_arms")
    decoder_arms: list[str] = Field(default_factory=lambda: ["synthetic", "program-written pairs"])
    decoder_finetune: EncoderConfig = Field(default_factory=lambda: EncoderConfig(epochs=3, lr=1e-4))
    holm_family: list[str] | None = Field(
        None, description="the contrasts tested as one Holm family (default: every contrast the config makes)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _family_is_declared(self):
        unknown = sorted(set(self.decoder_arms) - set(ARMS))
        if unknown:
            raise ValueError(f"decoder_arms {unknown} are not arms; choose from {list(ARMS)}")
        self.holm_family = declared_family(self.holm_family, family(self), "contrast")
        return self

    @property
    def writer_arms(self) -> list[str]:
        return [f"writer: {w}" for w in self.writers] + (
            ["writer: tuned on program pairs"] if self.tuned_writer else []
        )

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "long": cls(
                train_entities=40,
                pydoc_train=80,
                tasks=48,
                rows=120,
                seeds=3,
                tuned_writer=True,
                decoder="smollm2-135m-instruct",
            ),
            "paper": cls(
                writer="openai:gpt-4o-mini@https://api.openai.com/v1",
                train_entities=400,
                pydoc_train=1000,
                eval_entities=200,
                tasks=2000,
                per_passage=16,
                rows=10000,
                passage_chars=600,
                sample_batch=64,
                seeds=5,
                finetune=EncoderConfig(epochs=1, lr=2e-5, batch_size=64),
            ),
        }


# ---- the recipe ----------------------------------------------------------------------------------


@experiment(
    "synthetic-embeddings", question="What does an encoder inherit from the model that wrote its data?"
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    user = _user_corpora(config)  # read and checked before any compute
    train, held_out = split_passages(
        config.train_entities, config.eval_entities, config.pydoc_eval_share, config.seed
    )
    docs = [p for p in train if p.topic == "pydoc"]
    keep = set(random.Random(config.seed).sample(range(len(docs)), min(config.pydoc_train, len(docs))))
    train = [p for p in train if p.topic != "pydoc"] + [p for i, p in enumerate(docs) if i in keep]
    held_back = [p for i, p in enumerate(docs) if i not in keep]  # training sections no writer is shown
    if config.tuned_writer and not held_back:
        raise HeredityError("tuned_writer needs training sections the writers never see: lower pydoc_train")
    corpora = {c.name: (c, _store_corpus(store, c)) for c in [*eval_corpora(held_out), *user]}
    # 1-2. the writer: brainstormed tasks, then per_passage examples per training passage
    tasks, task_counts, tasks_id = _brainstorm(store, config, config.writer, progress)
    pool, pool_counts, pool_id = _write(
        store, config, assign_tasks(train * config.per_passage, tasks, config.seed), "pool", progress
    )
    data = _arm_rows(store, config, pool, train, pool_id, progress)
    for arm, writer in _other_writers(store, config, held_back, progress).items():
        data[arm] = _writer_arm(store, config, writer, train, progress)
    # 3-4. the students, one per arm and seed; the untouched encoder(s) and BM25 as references
    jobs = [(arm, arm, config.encoder, config.finetune) for arm in data] + [
        (f"decoder: {arm}", arm, config.decoder, config.decoder_finetune)
        for arm in (config.decoder_arms if config.decoder else [])
    ]
    students = {
        name: [_student(store, config, base, arm, data[arm][0], ft, s, progress) for s in range(config.seeds)]
        for name, arm, base, ft in jobs
    }
    # 5. every encoder on every corpus, per query
    scores = _score_all(store, config, corpora, students)
    report = analyse(config, corpora, scores, students, data, PUBLISHED)
    report["mteb"] = _mteb_all(
        store, config, {n: c for n, c in corpora.items() if n.startswith("beir-")}, students
    )
    report["writer"] = {
        "tasks": tasks,
        "task_counts": task_counts,
        "pool_counts": pool_counts,
        "no_brainstorm_counts": data["− brainstorm"][1].get("counts", {}),
        "examples": pool[:6],
        "rows": {arm: meta for arm, (_, meta) in data.items()},
    }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    inputs = [tasks_id, pool_id] + [m for ms in students.values() for m in ms[:1]]
    card = save_card(store, "synthetic-embeddings", report, inputs, markdown, plot)
    return {**card, "lineage_of": students["synthetic"][0]}


def _user_corpora(config: Config) -> list[IRCorpus]:
    """The user's BEIR folders, each named ``beir-FOLDER`` (never a built-in corpus' name), checked."""
    out = []
    for path in config.beir:
        c = read_beir(path, config.beir_split, config.beir_instruction)
        c.name = f"beir-{c.name}"
        if c.name in {o.name for o in out}:
            raise HeredityError(
                f"two BEIR folders are named {c.name[5:]!r}; give each corpus its own folder name"
            )
        out.append(c)
    return out


def _store_corpus(store: Store, corpus: IRCorpus) -> str:
    return put_rows(store, corpus.rows(), f"ir-{corpus.name}", op="make-ir-corpus")


def _generate(
    store: Store,
    config: Config,
    writer: str,
    prompts: list[str],
    schema: dict,
    temp: float,
    tokens: int,
    name: str,
    progress: bool,
) -> tuple[str, list[dict]]:
    """The writer's completions under a JSON schema, as a memoized sampling step (lineage to the writer)."""
    sc = SampleConfig(
        temperature=temp,
        max_new_tokens=tokens,
        batch_size=config.sample_batch,
        seed=config.seed,
        grammar=None if writer.startswith("openai:") else json_schema(schema),
    )
    did = sample_step(store, writer, prompts, sc, name=name, progress=progress)
    return did, read_table(store.path(did)).to_pylist()


def _brainstorm(store: Store, config: Config, writer: str, progress: bool) -> tuple[list[str], dict, str]:
    did, rows = _generate(
        store,
        config,
        writer,
        brainstorm_prompts(config.tasks),
        TASK_SCHEMA,
        config.brainstorm_temperature,
        64,
        "writer-tasks",
        progress,
    )
    tasks, counts = parse_tasks([r["completion"] for r in rows])
    if not tasks:
        raise HeredityError(f"the writer {writer} brainstormed no usable task; raise tasks")
    return tasks, counts, did


def _write(
    store: Store, config: Config, pairs: list, name: str, progress: bool, writer: str | None = None
) -> tuple[list, dict, str]:
    """Step 2 on (task, passage) pairs: the parsed rows, the counts of what was dropped, the samples' id."""
    shown = [(t, replace(p, text=p.text[: config.passage_chars])) for t, p in pairs]
    did, out = _generate(
        store,
        config,
        writer or config.writer,
        example_prompts(shown),
        EXAMPLE_SCHEMA,
        config.write_temperature,
        config.write_max_tokens,
        f"writer-{name}",
        progress,
    )
    rows, counts = parse_examples(pairs, [r["completion"] for r in out], [r["finish_reason"] for r in out])
    return rows, counts, did


def _arm_rows(store: Store, config: Config, pool: list, train: list, pool_id: str, progress: bool) -> dict:
    """Each arm's training rows as a dataset, with what it is: (dataset id, meta)."""
    n, s = config.rows, config.seed
    base = balanced(pool, n, s)
    by_id = {p.id: p for p in train}
    # each passage once: with per_passage > 1 a passage recurs in the pool, and a repeated program-written
    # pair would be its own false negative under the in-batch loss
    passages = [by_id[pid] for pid in dict.fromkeys(r["passage"] for r in base)]
    plain, counts, generic_id = _write(
        store, config, [(GENERIC_TASK, p) for p in passages], "one-generic-task", progress
    )
    swapped, n_swapped = swap_attributes(base, pool, SWAPPED)
    arms = {
        "synthetic": (base, {}),
        "− hard negatives": (base, {}),
        "− instruction prefix": (base, {}),
        "− brainstorm": (plain, {"counts": counts}),
        "program-written pairs": (program_pairs(passages, s), {}),
        "writer over-produces facts": (over_produce(pool, "facts/", config.bias_share, n, s), {}),
        "writer swaps capital/founded": (swapped, {"swapped": n_swapped}),
    }
    return {
        arm: _arm_dataset(store, rows, {"arm": arm}, [generic_id if arm == "− brainstorm" else pool_id], meta)
        for arm, (rows, meta) in arms.items()
    }


def _arm_dataset(store: Store, rows: list, config: dict, inputs: list, meta: dict) -> tuple[str, dict]:
    """An arm's training rows stored as a dataset: (its id, ``meta`` + its row count and facts share)."""
    rid = put_rows(
        store,
        [{k: r[k] for k in ("task", "query", "positive", "hard_negative", "topic")} for r in rows],
        "retrieval-rows",
        op="make-retrieval-rows",
        config=config,
        inputs=inputs,
    )
    topics = [r["topic"].split("/")[0] for r in rows]
    return rid, {**meta, "rows": len(rows), "facts_share": round(topics.count("facts") / len(rows), 3)}


def _other_writers(store: Store, config: Config, held_back: list, progress: bool) -> dict[str, str]:
    """Arm name → writer spec for the configured other writers and the tuned writer: the writer LoRA-tuned on
    program-written examples (``program_pairs``, as JSON) of training sections no writer is shown."""
    out = dict(zip(config.writer_arms, config.writers, strict=False))
    if config.tuned_writer:
        shown = [replace(p, text=p.text[: config.passage_chars]) for p in held_back]
        pairs = program_pairs(shown, config.seed)
        prompts = example_prompts([(r["task"], p) for r, p in zip(pairs, shown, strict=True)])
        limits = {
            k: EXAMPLE_SCHEMA["properties"][k]["maxLength"] for k in ("query", "positive", "hard_negative")
        }
        rows = [  # targets the writer's schema allows: a longer one would teach it what the grammar then cuts
            {"prompt": q, "completion": json.dumps({k: _fit(r[k], n) for k, n in limits.items()})}
            for q, r in zip(prompts, pairs, strict=True)
        ]
        did = put_rows(store, rows, "writer-tuning-rows", op="make-retrieval-rows", config={"arm": "tuning"})
        tuned = finetune(store, config.writer, did, config.tuned_writer_finetune, progress=progress)
        out["writer: tuned on program pairs"] = tuned["model"]
    return out


def _fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary (whole when it fits)."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")


def _writer_arm(store: Store, config: Config, writer: str, train: list, progress: bool) -> tuple[str, dict]:
    """Another writer's full recipe on the same passages: its own brainstorm, its examples, ``rows`` drawn."""
    tasks, _, tasks_id = _brainstorm(store, config, writer, progress)
    pairs = assign_tasks(train * config.per_passage, tasks, config.seed)
    pool, counts, pool_id = _write(store, config, pairs, "other-writer-pool", progress, writer)
    rows = balanced(pool, config.rows, config.seed)
    return _arm_dataset(
        store, rows, {"arm": "writer", "writer": writer}, [pool_id, tasks_id], {"counts": counts}
    )


def _student(
    store: Store,
    config: Config,
    base: str,
    arm: str,
    rows_id: str,
    ft: EncoderConfig,
    seed: int,
    progress: bool,
) -> str:
    cfg = ft.model_copy(
        update={
            "seed": config.seed + seed,
            "hard_negatives": ft.hard_negatives and arm != "− hard negatives",
            "prefix": ft.prefix and arm != "− instruction prefix",
        }
    )
    return finetune_encoder(store, base, rows_id, cfg, progress=progress)["model"]


def _mteb_all(store: Store, config: Config, corpora: dict, students: dict) -> dict:
    """MTEB's own scores (``mteb.evaluate`` on a local ``AbsTaskRetrieval``) of every encoder on the user's
    corpora: corpus → arm → {measure: mean over the arm's training seeds, "seeds": n}."""
    out: dict = {}
    if not config.mteb:
        return out
    models = {"untouched": ([config.encoder], config.finetune)}
    if config.decoder:
        models["decoder untouched"] = ([config.decoder], config.decoder_finetune)
    for arm, ms in students.items():
        models[arm] = (ms, config.decoder_finetune if arm.startswith("decoder: ") else config.finetune)
    for name, (corpus, cid) in corpora.items():
        out[name] = {}
        for arm, (ms, ft) in models.items():
            prefix = arm in students and ft.prefix and not arm.endswith("− instruction prefix")
            runs = [
                mteb_scores(store, m, cid, name, corpus.instruction, prefix, ft.max_seq_length) for m in ms
            ]
            out[name][arm] = {
                k: round(float(sum(r[k] for r in runs) / len(runs)), 5)
                for k in ("ndcg_at_10", "mrr_at_10", "recall_at_10", "map_at_10")
            } | {"seeds": len(runs)}
    return out


def _score_all(store: Store, config: Config, corpora: dict, students: dict) -> dict:
    """(arm, seed index, corpus) → per-query rows; the references under seed 0. Every encoder reads at most
    the students' ``max_seq_length`` tokens."""
    refs = {"untouched": (config.encoder, config.finetune), "BM25": ("bm25", config.finetune)}
    if config.decoder:
        refs["decoder untouched"] = (config.decoder, config.decoder_finetune)
    out = {}
    for name, (corpus, cid) in corpora.items():
        for ref, (enc, ft) in refs.items():
            did, _ = retrieval_scores(store, enc, cid, name, corpus.instruction, False, ft.max_seq_length)
            out[(ref, 0, name)] = read_table(store.path(did)).to_pylist()
        for arm, models in students.items():
            ft = config.decoder_finetune if arm.startswith("decoder: ") else config.finetune
            prefix = ft.prefix and not arm.endswith("− instruction prefix")
            for i, mid in enumerate(models):
                did, _ = retrieval_scores(
                    store, mid, cid, name, corpus.instruction, prefix, ft.max_seq_length
                )
                out[(arm, i, name)] = read_table(store.path(did)).to_pylist()
    return out
