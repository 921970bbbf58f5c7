"""MTEB's own retrieval pipeline on a user's local corpus, scoring heredity's encoders.

heredity scores an encoder on an ``IRCorpus`` with its own per-query wrapper of sentence-transformers'
evaluator (``engine.encoder.retrieval_scores``): it keeps each query's ranking for paired bootstraps, but
its numbers are heredity's. A user with MTEB retrieval data on disk (a BEIR folder read by ``data.beir``,
or any stored corpus) also wants the numbers MTEB itself computes, comparable to an MTEB task's scores.
Here the corpus becomes an MTEB task (``local_task``: an ``AbsTaskRetrieval`` whose ``load_data`` reads
the ``IRCorpus`` in memory, so nothing is ever fetched) and ``mteb_scores`` runs ``mteb.evaluate`` on it
as a store step: MTEB encodes, searches, ranks and scores; nothing here recomputes a metric.

With ``prefix`` the task instruction goes in front of every query and of no document, written as heredity
writes it (``Instruct: {task}\\nQuery: ``), through MTEB's prompt mechanism: the query prompt of
sentence-transformers' wrapper (``model_prompts``), which MTEB picks by prompt type.

Relevance is binary (an ``IRCorpus`` keeps which documents are relevant, not how much): on a corpus whose
qrels are graded, MTEB's leaderboard nDCG uses the grades and these numbers do not.
"""

from __future__ import annotations

from functools import cache

from heredity.engine.encoder import PREFIX, _base_key, _version, load_encoder
from heredity.engine.retrieval import BUNDLED, IRCorpus
from heredity.errors import HeredityError
from heredity.store.ops import op

SPLIT = "test"  # the split the op's task evaluates (a name in MTEB's result, nothing is read by it)
BATCH_SIZE = 64  # as heredity's own evaluator encodes


def task_name(corpus_name: str) -> str:
    """The MTEB task name of a local corpus: ``heredity-<name>``."""
    return f"heredity-{corpus_name}"


@cache
def _local_retrieval():
    """The base class of local tasks (defined on first use: importing mteb takes seconds)."""
    from datasets import Dataset
    from mteb.abstasks import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    class LocalRetrieval(AbsTaskRetrieval):
        """An MTEB retrieval task over an ``IRCorpus`` held in memory; ``load_data`` never fetches."""

        def __init__(self, corpus: IRCorpus, **kwargs):
            self.ir_corpus = corpus  # not ``corpus``: MTEB reads that attribute as a v1-format dataset
            super().__init__(**kwargs)

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            """Fill ``self.dataset`` (subset ``default``, each eval split) in MTEB's format from the corpus:
            every document; every query with a relevant document; relevance 1 per relevant pair."""
            if self.data_loaded:
                return
            c = self.ir_corpus
            judged = [q for q in c.queries if c.qrels.get(q)]
            split = RetrievalSplitData(
                corpus=Dataset.from_dict({"id": list(c.corpus), "text": list(c.corpus.values())}),
                queries=Dataset.from_dict({"id": judged, "text": [c.queries[q] for q in judged]}),
                relevant_docs={q: dict.fromkeys(sorted(c.qrels[q]), 1) for q in judged},
                top_ranked=None,
            )
            self.dataset = {"default": dict.fromkeys(self.metadata.eval_splits, split)}
            self.dataset_transform(num_proc=num_proc)
            self.data_loaded = True

    return LocalRetrieval


def local_task(corpus: IRCorpus, split: str = SPLIT):
    """An MTEB retrieval task (an ``AbsTaskRetrieval``, English, main score nDCG@10) named
    ``heredity-<corpus name>`` whose one split ``split`` is ``corpus``; its dataset path and revision name
    no hub dataset and are never read. The corpus' instruction, if any, is the task's query prompt (read
    by MTEB's instruction-model wrappers). Raises ``HeredityError`` for a corpus without a judged query."""
    from mteb.abstasks.task_metadata import TaskMetadata

    if not any(corpus.qrels.get(q) for q in corpus.queries) or not corpus.corpus:
        raise HeredityError(f"corpus {corpus.name!r} has no document or no query with a relevant document")
    name = task_name(corpus.name)
    metadata = TaskMetadata(
        name=name,
        description=f"The local retrieval corpus {corpus.name!r}, evaluated by heredity (never downloaded).",
        dataset={"path": f"local/{name}", "revision": "local"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        prompt={"query": corpus.instruction} if corpus.instruction else None,
        bibtex_citation="",
    )
    cls = type("HeredityLocalRetrieval", (_local_retrieval(),), {"metadata": metadata})
    return cls(corpus)


def mteb_model(model, instruction: str, prefix: bool):
    """MTEB's sentence-transformers wrapper of ``model``; with ``prefix`` and an instruction, its query
    prompt is ``PREFIX`` on the instruction and every other prompt is the model's own (documents unchanged).
    As MTEB does, the prompts then replace ``model.prompts``."""
    from mteb.models import SentenceTransformerEncoderWrapper

    prompts = None
    if prefix and instruction:
        prompts = {**(model.prompts or {}), "query": PREFIX.format(task=instruction)}
        prompts.setdefault("document", "")
    return SentenceTransformerEncoderWrapper(model, model_prompts=prompts)


def evaluate_task(model, task, out_dir=None) -> dict[str, float]:
    """``mteb.evaluate`` of ``model`` (a wrapper from ``mteb_model``) on ``task``, with no result cache and
    no CO2 tracker; MTEB's scores of the task's first split as a flat dict of floats (a NaN is left out),
    with MTEB's result JSON written to ``out_dir / "result.json"`` when given."""
    import math

    import mteb

    res = mteb.evaluate(
        model,
        task,
        cache=None,
        co2_tracker=False,
        show_progress_bar=False,
        encode_kwargs={"batch_size": BATCH_SIZE, "show_progress_bar": False},
    )
    if res.exceptions:
        raise HeredityError(f"MTEB failed on {task.metadata.name}: {res.exceptions[0].exception}")
    result = res.task_results[0]
    if out_dir is not None:
        result.to_disk(out_dir / "result.json")
    scores = result.scores[task.metadata.eval_splits[0]][0]
    return {
        k: float(v)
        for k, v in scores.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    }


@op("mteb-scores", 1)
def mteb_scores(
    store,
    encoder: str,
    corpus_id: str,
    corpus_name: str,
    instruction: str,
    prefix: bool,
    max_seq_length: int | None = 128,
) -> dict[str, float]:
    """MTEB's retrieval scores (``mteb.evaluate`` on ``local_task``) of an encoder (whatever
    ``retrieval_scores`` takes but ``bm25``: the bundled name, a stored encoder's id, ...), truncating its
    inputs at ``max_seq_length`` tokens, on a stored corpus; with ``prefix`` each query (and no document) is
    written ``PREFIX`` + query. A store step whose output is MTEB's result JSON (a report, ``result.json``);
    returns MTEB's scores of the split as a flat dict of floats (nDCG, MAP, recall, precision, MRR at MTEB's
    cut-offs, ``main_score`` = ``ndcg_at_10``, ...)."""
    from heredity.store import read_table

    if encoder == "bm25":
        raise HeredityError(
            "MTEB scores an encoder: give the bundled name or a stored encoder's id, not bm25"
        )
    key, inputs = _base_key(store, encoder)
    cfg = {
        "scorer": key,
        "mteb": _version("mteb"),
        "prefix": prefix,
        "instruction": instruction,
        "corpus_name": corpus_name,
        "max_seq_length": max_seq_length,
    }

    def run(ctx):
        corpus = IRCorpus.from_rows(corpus_name, read_table(store.path(corpus_id)).to_pylist(), instruction)
        model = load_encoder(store, inputs[0] if inputs else BUNDLED, max_seq_length)
        out = ctx.output("scores", "report", f"mteb-{corpus_name}")
        return {"mteb": evaluate_task(mteb_model(model, instruction, prefix), local_task(corpus), out)}

    res = store.run_step("mteb-scores", cfg, [*inputs, corpus_id], run)
    return {k: v for k, v in res.metrics.get("mteb", {}).items() if v is not None}
