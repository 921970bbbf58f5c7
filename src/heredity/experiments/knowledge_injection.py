"""Knowledge injection: fine-tuning or retrieval for facts a model cannot know? (Ovadia et al. 2023,
arXiv 2312.05934)

Methods, as a paper's section would list them:
1. Knowledge base: invented countries with three attributes each (capital, founding year, main export),
   ``data.facts``: no duplicate, no contradiction, nothing a model could have seen.
2. Test questions: one per fact, worded unlike any training statement.
3. Arms:
   * base: the model alone (the floor: guessing an export among common goods can succeed by chance);
   * RAG: the question's top-k fact statements, retrieved by all-MiniLM-L6-v2 embeddings (bundled), in the
     prompt;
   * FT: continued training (full-sequence loss, plain text) on one statement per fact;
   * FT + paraphrases: the same on ``paraphrases`` wordings of each fact;
   * FT, statement repeated: the plain statement ``paraphrases`` times (the paraphrase arm's number of
     optimizer steps, so wording is the only difference between the two);
   * FT + RAG, FT + paraphrases + RAG: the fine-tuned models with retrieval;
   * RAG (retriever X), one per ``retrievers`` entry (none by default): the base model with the top-k facts
     of another retriever (a stored sentence encoder, e.g. ``engine.encoder.finetune_encoder``'s, or a
     sentence-transformers name or path), each with its own recall.
4. Greedy answers; correct = the fact's value occurs in the answer (case-insensitive, whole word) and no
   other value of that attribute does (listing candidates or copying every retrieved fact earns nothing).
   Accuracy [Wilson 95% CI] per arm and per attribute; retrieval recall@1 and @k (the question's own fact
   retrieved).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from pydantic import BaseModel, Field, field_validator

from heredity.data import put_rows
from heredity.data.facts import EXPORTS, Fact, make_facts, questions, statements
from heredity.engine import FinetuneConfig, SampleConfig, completions, finetune, sample_step
from heredity.engine.retrieval import BUNDLED, Index, recall_at_k
from heredity.experiments import experiment
from heredity.experiments.knowledge_injection_render import markdown, plot
from heredity.models import materialize
from heredity.reports.card import save_card
from heredity.reports.stats import wilson_ci
from heredity.store import Store
from heredity.store.ops import rows_op

rows_op(
    "make-facts", "make-fact-questions", "make-fact-paraphrases", "make-fact-repeats"
)  # rows made here, stored by data.io.put_rows

RAG_TEMPLATE = "Use these facts to answer.\n{facts}\n\nQuestion: {question}"


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    entities: int = Field(60, ge=1, description="invented countries (3 facts each)")
    paraphrases: int = Field(4, ge=2, le=4, description="wordings per fact in the paraphrase arm")
    top_k: int = Field(3, ge=1)
    embedder: str = BUNDLED
    retrievers: list[str] = Field(
        default_factory=list,
        description="extra retrievers, one RAG arm each: a stored encoder's id (m-...) or a "
        "sentence-transformers name or path",
    )
    finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(
            method="full",
            loss="full_sequence",
            chat=False,
            lr=1e-4,
            epochs=3,
            batch_size=16,
            max_length=48,
            warmup_ratio=0.05,
        )
    )
    max_new_tokens: int = Field(24, ge=4)
    sample_batch: int = Field(32, ge=1)
    seed: int = 0

    @field_validator("retrievers")
    @classmethod
    def _distinct_arms(cls, v: list[str]) -> list[str]:
        labels = [retriever_arm(r) for r in v]
        if len(set(labels)) < len(labels):
            raise ValueError(f"retrievers {v} name the same arm twice ({labels}); give each once")
        return v

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "paper": cls(
                entities=200,
                sample_batch=128,
                finetune=FinetuneConfig(
                    method="full",
                    loss="full_sequence",
                    chat=False,
                    lr=5e-5,
                    epochs=10,
                    batch_size=32,
                    max_length=48,
                ),
            ),
        }


# ---- the recipe ----------------------------------------------------------------------------------


@experiment("knowledge-injection", question="Fine-tuning or retrieval for new facts?")
def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    base = materialize(config.base, store)
    # 1-2. the knowledge base and the test questions
    facts = make_facts(config.entities, config.seed)
    # one plain statement per fact: the retrieval corpus and the FT data
    kb = statements(facts, 1, config.seed)
    qs = questions(facts, config.seed)
    data = _datasets(store, config, facts, kb, qs)
    # 3. the fine-tuned arms: plain statements, the statement repeated, paraphrases
    ft = config.finetune.model_copy(update={"seed": config.seed})
    ft_plain = finetune(store, base, data["facts"], ft, progress=progress)
    ft_reps = finetune(store, base, data["repeats"], ft, progress=progress)
    ft_para = finetune(store, base, data["paraphrases"], ft, progress=progress)
    # 3. retrieval for the RAG arms: each question's top-k statements (and each extra retriever's)
    rag = retrieve(store, config.embedder, kb, qs, config.top_k)
    recall, rag_prompts = rag["recall"], rag["prompts"]
    extra = {
        retriever_arm(r): {"retriever": r, **retrieve(store, r, kb, qs, config.top_k)}
        for r in config.retrievers
    }
    plain_prompts = [q["prompt"] for q in qs]
    # 4. every arm's greedy answers to the test questions
    x = config.paraphrases
    arms = {
        "base": (base, plain_prompts),
        "RAG": (base, rag_prompts),
        "FT": (ft_plain["model"], plain_prompts),
        f"FT, statement repeated (×{x})": (ft_reps["model"], plain_prompts),
        f"FT + paraphrases (×{config.paraphrases})": (ft_para["model"], plain_prompts),
        "FT + RAG": (ft_plain["model"], rag_prompts),
        f"FT + paraphrases (×{config.paraphrases}) + RAG": (ft_para["model"], rag_prompts),
        **{arm: (base, e["prompts"]) for arm, e in extra.items()},
    }
    answers = {
        arm: _answers(store, mid, prompts, config, arm, progress) for arm, (mid, prompts) in arms.items()
    }
    train = _training(
        {
            "FT": ft_plain,
            f"FT, statement repeated (×{x})": ft_reps,
            f"FT + paraphrases (×{x})": ft_para,
        }
    )
    report = build_report(config, arms, answers, qs, recall, train, rivals(facts), _retriever_rows(extra))
    report["retrieval_seconds"] = rag["seconds"]
    report["seconds"] = round(time.perf_counter() - t0, 1)

    card = save_card(
        store,
        "knowledge-injection",
        report,
        [
            base,
            ft_plain["model"],
            ft_reps["model"],
            ft_para["model"],
            data["questions"],
            *_stored(store, extra),
        ],
        markdown,
        plot,
    )
    return {**card, "lineage_of": ft_para["model"]}


def retriever_arm(ref: str) -> str:
    """An extra retriever's arm: ``RAG (retriever m-3fa2c1)`` for a stored encoder (its id's first 8
    characters), else the name's or path's last part (``RAG (retriever all-mpnet-base-v2)``)."""
    from heredity.store.store import ID_PREFIX_RE

    ref = ref.strip()
    short = ref[:8] if ID_PREFIX_RE.match(ref) else ref.rstrip("/").rsplit("/", 1)[-1] or ref
    return f"RAG (retriever {short})"


def retrieve(store: Store, ref: str, kb: list[dict], qs: list[dict], k: int) -> dict:
    """Each question's top-k statements by retriever ``ref`` (a sentence-transformers name or path, or a
    stored encoder's id): the RAG prompts, recall@1 and @k (the question's own fact retrieved), and the
    seconds to embed and search."""
    t = time.perf_counter()
    retrieved = Index([r["text"] for r in kb], ref, store=store).search([q["prompt"] for q in qs], k)
    return {
        "prompts": [
            rag_prompt(q["prompt"], [kb[i]["text"] for i in got])
            for q, got in zip(qs, retrieved, strict=True)
        ],
        "recall": {j: recall_at_k(retrieved, list(range(len(qs))), j) for j in sorted({1, k})},
        "seconds": round(time.perf_counter() - t, 2),
    }


def _retriever_rows(extra: dict) -> dict:
    """Each extra retriever's arm → what it is, its recall and its seconds (for the report)."""
    return {
        arm: {"retriever": e["retriever"], "recall": e["recall"], "seconds": e["seconds"]}
        for arm, e in extra.items()
    }


def _stored(store: Store, extra: dict) -> list[str]:
    """The stored encoders among the extra retrievers (the card's lineage)."""
    from heredity.store.store import ID_PREFIX_RE

    return [store.resolve_id(e["retriever"]) for e in extra.values() if ID_PREFIX_RE.match(e["retriever"])]


def _datasets(
    store: Store, config: Config, facts: list[Fact], kb: list[dict], qs: list[dict]
) -> dict[str, str]:
    """The knowledge base, the test questions, the paraphrases and the repeated statements, as datasets."""
    kb_id = put_rows(
        store, kb, "facts", op="make-facts", config={"entities": config.entities, "seed": config.seed}
    )
    q_id = put_rows(store, qs, "fact-questions", op="make-fact-questions", inputs=[kb_id])
    para = statements(facts, config.paraphrases, config.seed)
    para_id = put_rows(
        store,
        para,
        f"facts-x{config.paraphrases}",
        op="make-fact-paraphrases",
        config={"paraphrases": config.paraphrases},
        inputs=[kb_id],
    )
    # the plain statement repeated: the paraphrases' step count
    reps = [r for r in kb for _ in range(config.paraphrases)]
    reps_id = put_rows(
        store,
        reps,
        f"facts-repeat-x{config.paraphrases}",
        op="make-fact-repeats",
        config={"repeats": config.paraphrases},
        inputs=[kb_id],
    )
    return {"facts": kb_id, "questions": q_id, "paraphrases": para_id, "repeats": reps_id}


def _training(results: dict) -> dict:
    """Each fine-tune's examples, optimizer steps, first and last loss, and seconds."""
    return {
        name: {
            k: r.metrics.get(k) for k in ("examples", "optimizer_steps", "loss_first", "loss_last", "seconds")
        }
        for name, r in results.items()
    }


# ---- answers and grading -------------------------------------------------------------------------


def _has(answer: str, value: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(value)}(?![\w])", answer, re.IGNORECASE) is not None


def correct(answer: str, value: str, others: Iterable[str] = ()) -> bool:
    """The value occurs in the answer as a whole word (any case) and no other value of the same kind does (an
    answer that lists several capitals, years or exports, or copies every retrieved fact, is not credited)."""
    return _has(answer, value) and not any(_has(answer, o) for o in others if o.lower() != value.lower())


def rivals(facts: list[Fact]) -> dict[str, set[str]]:
    """Per attribute, every value an answer could name instead: all values of that attribute in the knowledge
    base, and for exports every good the generator can draw."""
    out: dict[str, set[str]] = {}
    for f in facts:
        out.setdefault(f.attribute, set()).add(f.value)
    out.setdefault("export", set()).update(EXPORTS)
    return out


def rag_prompt(question: str, facts: list[str]) -> str:
    return RAG_TEMPLATE.format(facts="\n".join(f"- {f}" for f in facts), question=question)


def _answers(
    store: Store, model_id: str, prompts: list[str], config: Config, arm: str, progress: bool
) -> list[str]:
    """Greedy answers, as a memoized sampling step (a dataset with the model in its lineage)."""
    did = sample_step(
        store,
        model_id,
        prompts,
        SampleConfig(
            temperature=0, max_new_tokens=config.max_new_tokens, batch_size=config.sample_batch, stop=["\n\n"]
        ),
        name=f"answers-{re.sub(r'[^a-z0-9]+', '-', arm.lower()).strip('-')}",
        progress=progress,
    )
    return completions(store, did)


# ---- statistics and the report -------------------------------------------------------------------


def _versus(a: dict, b: dict, a_name: str, b_name: str, published: str) -> str:
    """A three-way verdict from two rates' intervals."""
    if a["lo"] > b["hi"]:
        return f"{a_name} beats {b_name}" + (
            ", as published" if published == "a" else ", against the published result"
        )
    if b["lo"] > a["hi"]:
        return f"{b_name} beats {a_name}" + (
            ", as published" if published == "b" else ", against the published result"
        )
    return f"{a_name} and {b_name} are not separated here (overlapping intervals)"


def build_report(
    config: Config,
    arms: dict,
    answers: dict,
    qs: list[dict],
    recall: dict,
    train: dict,
    others: dict[str, set[str]],
    retrievers: dict | None = None,
) -> dict:
    """Accuracy per arm and attribute, three sample answers per arm, recall, training and the outcome;
    ``retrievers``: each extra retriever's arm → {retriever, recall, seconds} (reported only when given)."""
    attrs = sorted({q["attribute"] for q in qs})
    rows = []
    for arm, (mid, prompts) in arms.items():
        ok = [
            correct(a, q["completion"], others.get(q["attribute"], ()))
            for a, q in zip(answers[arm], qs, strict=True)
        ]
        rows.append(
            {
                "arm": arm,
                "model": mid,
                "accuracy": wilson_ci(sum(ok), len(ok)),
                "by_attribute": {
                    at: wilson_ci(
                        sum(o for o, q in zip(ok, qs, strict=True) if q["attribute"] == at),
                        sum(q["attribute"] == at for q in qs),
                    )
                    for at in attrs
                },
                "examples": [
                    {"question": q["prompt"], "prompt": p, "answer": a, "value": q["completion"]}
                    for q, p, a in list(zip(qs, prompts, answers[arm], strict=True))[:3]
                ],
            }
        )
    by = {r["arm"]: r for r in rows}
    x = config.paraphrases
    para, reps = f"FT + paraphrases (×{x})", f"FT, statement repeated (×{x})"

    def acc(a):
        r = by[a]["accuracy"]
        return f"{a} {r['mean']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"

    best_ft = max((by["FT"], by[reps], by[para]), key=lambda r: r["accuracy"]["mean"])
    outcome = (
        f"accuracy: {acc('base')}; {acc('RAG')}; {acc('FT')}; {acc(reps)}; {acc(para)}; {acc('FT + RAG')}; "
        f"retrieval recall@{config.top_k} {recall[config.top_k]:.2f}. "
        + _versus(
            by["RAG"]["accuracy"], best_ft["accuracy"], "RAG", f"the best fine-tune ({best_ft['arm']})", "a"
        )
        + "; "
        + _versus(
            by[para]["accuracy"],
            by[reps]["accuracy"],
            "paraphrases",
            f"the same statement repeated ×{x} (same steps)",
            "a",
        )
    )
    out = {
        # without extra retrievers the config is as it was before they existed (the committed report's key)
        "config": config.model_dump(exclude=set() if config.retrievers else {"retrievers"}),
        "rows": rows,
        "recall": {str(k): v for k, v in recall.items()},
        "train": train,
        "questions": len(qs),
        "attributes": attrs,
        "outcome": outcome,
    }
    if retrievers:
        out["retrievers"] = {
            arm: {**r, "recall": {str(k): v for k, v in r["recall"].items()}} for arm, r in retrievers.items()
        }
        out["outcome"] += "; " + "; ".join(
            f"{acc(arm)} (recall@{config.top_k} {r['recall'][config.top_k]:.2f})"
            for arm, r in retrievers.items()
        )
    return out
