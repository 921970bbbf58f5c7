"""format-spread: the grammar renders one item in distinct formats, the statistics recover known answers on
constructed matrices, and the experiment runs end to end on tiny models (a rerun computes nothing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from heredity.data.formats import PLAIN, answer_split, mc_items, render_vars, sample_formats, template_text
from heredity.experiments.format_spread_stats import (
    correlation_difference,
    rank_agreement,
    reliability,
    search_vs_exhaustive,
    spread,
)

ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


def rendered(f, item, shots):
    return ENV.from_string(template_text(f)).render(**render_vars(item, shots))


def test_the_grammar_renders_one_item_in_distinct_formats_that_keep_its_content():
    formats = sample_formats(24, seed=3)
    assert formats[0] == PLAIN and len(set(formats)) == 24
    item, shots = mc_items("addition", 1, "test")[0], mc_items("addition", 2, "train", 1)
    texts = [rendered(f, item, shots) for f in formats]
    assert len(set(texts)) == 24  # distinct renderings of the same item
    for f, t in zip(formats, texts, strict=True):
        assert item["question"] in t and all(o in t for o in item["options"])
        labels = f.labels(4)
        assert len(set(labels)) == 4 and all(lab in t for lab in labels)
        # the worked examples carry their right answer's label; the item's answer field is left open
        assert t.count(f.field("answer") + f.separator) == 3
        prompt, tail = answer_split(t)
        assert prompt + tail == t and not prompt.endswith(" ") and tail.strip() == ""
    assert rendered(PLAIN, item, []).startswith("Question: What is")


def test_items_have_one_right_option_and_train_and_test_share_no_question():
    for task in ("sentiment", "addition", "words"):
        test, train = mc_items(task, 30, "test"), mc_items(task, 60, "train")
        assert not {i["question"] for i in test} & {i["question"] for i in train}
        for it in test:
            assert len(set(it["options"])) == len(it["options"]) and 0 <= it["answer"] < len(it["options"])
    add = mc_items("addition", 20, "test")
    for it in add:
        a, b = (int(x) for x in it["question"].removeprefix("What is ").rstrip("?").split(" + "))
        assert it["options"][it["answer"]] == str(a + b)
    answers = [it["answer"] for it in add]
    assert len(set(answers)) > 1  # the right option's position is shuffled


def constructed(acc: list[float], n: int = 200, seed: int = 0) -> np.ndarray:
    """Items × formats with exactly ``acc[f] * n`` right answers in format f, placed at random."""
    rng = np.random.default_rng(seed)
    m = np.zeros((n, len(acc)))
    for f, a in enumerate(acc):
        m[rng.choice(n, int(round(a * n)), replace=False), f] = 1
    return m


def test_spread_recovers_a_known_spread_and_finds_none_where_format_does_not_matter():
    tasks = np.array(["t"] * 200)
    s = spread(constructed([0.9, 0.5, 0.7]), tasks, boot=500, perms=500)
    assert s["spread"] == pytest.approx(0.4) and s["lo"] < 0.4 < s["hi"]
    assert s["p"] < 0.01 and (s["best"], s["worst"]) == (0, 1) and s["unit"] == "items"
    # every item answered the same way in every format: the spread is 0 and the permutation p is 1
    same = np.repeat(constructed([0.6]), 5, axis=1)
    flat = spread(same, tasks, boot=200, perms=200)
    assert flat["spread"] == 0 and flat["p"] == 1
    # within-item shuffles keep each item's total: a spread of pure item noise is not significant
    rng = np.random.default_rng(1)
    noise = (rng.random((200, 8)) < 0.6).astype(float)
    assert spread(noise, tasks, boot=200, perms=500)["p"] > 0.01


def test_rank_agreement_and_its_ceiling_on_constructed_rankings():
    tasks = np.array(["a"] * 100 + ["b"] * 100)
    acc = [0.2, 0.35, 0.5, 0.65, 0.8, 0.95]
    a = constructed(acc, seed=1)
    same = rank_agreement(a, constructed(acc, seed=2), tasks, boot=300)
    assert same["spearman"]["estimate"] == pytest.approx(1.0) and same["kendall"][
        "estimate"
    ] == pytest.approx(1.0)
    assert same["spearman"]["lo"] > 0.5
    rev = rank_agreement(a, constructed(acc[::-1], seed=3), tasks, boot=300)
    assert rev["spearman"]["estimate"] == pytest.approx(-1.0)
    assert reliability(a, tasks, splits=200) > 0.9  # well-separated formats: a reliable ranking
    d = correlation_difference(a, constructed(acc, seed=4), constructed(acc[::-1], seed=5), tasks, boot=300)
    assert d["diff"] == pytest.approx(2.0) and d["p"] < 0.01 and d["lo"] > 0


def test_thompson_sampling_finds_a_clear_best_and_worst_under_a_quarter_of_the_budget():
    m = constructed([0.3, 0.5, 0.5, 0.55, 0.9, 0.5, 0.1, 0.6], n=100)
    r = search_vs_exhaustive(m, budget=m.size // 4, runs=50)
    assert r["best"]["exhaustive"] == pytest.approx(0.9) and r["worst"]["exhaustive"] == pytest.approx(0.1)
    assert r["best"]["thompson_found"] >= 0.9 and r["worst"]["thompson_found"] >= 0.9


def test_the_experiment_on_tiny_models_and_a_rerun_computes_nothing(tmp_path, monkeypatch):
    from conftest import stored_tiny

    from heredity.engine.finetune import FinetuneConfig
    from heredity.experiments.format_spread import Config, run
    from heredity.store import Store

    store = Store(tmp_path)
    ft = {"chat": False, "max_steps": 2, "batch_size": 4, "max_length": 1024}
    cfg = Config(
        model=stored_tiny(store, "parent", max_position_embeddings=1024),
        items=6,
        shots=1,
        formats=4,
        train_items=4,
        lora=FinetuneConfig(method="lora", **ft),
        full=FinetuneConfig(method="full", **ft),
        unrelated="tiny:micro",
        unrelated_finetune=FinetuneConfig(method="full", **ft),
        boot=200,
    )
    out = run(store, cfg, progress=False)
    data = json.loads((store.path(out["report"]) / "report.json").read_text())
    assert set(data["accuracy"]) == {
        "parent",
        "LoRA child",
        "full child",
        "merge of the children",
        "unrelated",
    }
    assert all(len(v) == 4 for v in data["accuracy"].values())
    assert [t["name"] for t in data["tests"]] == cfg.holm_family and len(cfg.holm_family) == 7
    assert data["items"] == {"addition": 6, "sentiment": 6, "words": 6}
    from heredity.prompts import versions

    assert len(versions(store, "format-spread")) == 4  # each format a version of the stored prompt
    assert "## Spread per model" in out["markdown"] and "**Outcome**" in out["markdown"]

    compute = Store._compute

    def computed(self, op, *a, **k):
        assert op == "report-format-spread", f"the rerun computed step {op}"
        return compute(self, op, *a, **k)

    monkeypatch.setattr(Store, "_compute", computed)
    again = run(Store(tmp_path), cfg, progress=False)
    assert again["markdown"].split("Run time")[0] == out["markdown"].split("Run time")[0]


def test_option_logprobs_runs_a_prompt_once_and_equals_logprobs(tmp_path):
    """The shared-prompt scorer gives what scoring each (prompt, option) pair alone gives, for prompts of
    different lengths in one batch (left padding) and options of different token counts."""
    from conftest import stored_tiny

    from heredity.engine.logprobs import logprobs, option_logprobs
    from heredity.models import load
    from heredity.store import Store

    store = Store(tmp_path)
    model, tok = load(stored_tiny(store, "scorer"), store)
    prompts = ["Question: 2 + 2?\nAnswer:", "Q: hi", "A much longer prompt about a review.\nOutput:\n"]
    options = [[" 4", " five", " (C) 22"], [" yes", " no way at all"], ["positive", "negative", "x"]]
    got = option_logprobs(model, tok, prompts, options, batch_size=2)
    flat = logprobs(
        model,
        tok,
        [p for p, os in zip(prompts, options, strict=True) for _ in os],
        [o for os in options for o in os],
        chat=False,
    )
    want = [sum(x) for x in flat]
    assert [len(g) for g in got] == [3, 2, 3]
    assert np.allclose([x for g in got for x in g], want, atol=1e-4)


def test_options_scored_through_heredity_serve_with_the_openai_client_equal_the_local_scores(
    live_server, local
):
    """The paper preset's endpoint path: /v1/completions with echo (the official ``openai`` client against
    ``heredity serve`` on loopback) gives each option the log-probability the local scorer gives."""
    from heredity.engine.logprobs import option_logprobs, remote_option_logprobs
    from heredity.models import RemoteModel

    aid, model, tok = local
    prompts = ["Question: 2 + 2?\nAnswer:", "Review: a fine meal.\nOutput:\n"]
    options = [[" 4", " five", " 22"], ["positive", "negative"]]
    remote = remote_option_logprobs(RemoteModel(aid, live_server.url + "/v1"), prompts, options, batch_size=3)
    here = option_logprobs(model, tok, prompts, options)
    assert [len(r) for r in remote] == [3, 2]
    assert np.allclose([x for r in remote for x in r], [x for h in here for x in h], atol=1e-4)


def test_set_overrides_rederive_the_declared_family_before_the_run():
    """`--set` that changes the design (the documented endpoint command, more seeds, a decoder arm) gets the
    family that design makes; a family the user declares by hand is kept and checked."""
    from heredity.cli import preset_with_sets
    from heredity.experiments import format_spread as fs
    from heredity.experiments import synthetic_embeddings as se

    quick = fs.Config.presets()["quick"]
    sets = ["model=openai:m@http://127.0.0.1:9/v1", "children=[]", "merge=false"]
    cfg = fs.Config.model_validate(preset_with_sets(fs.Config, quick, sets, "format-spread"))
    assert cfg.holm_family == ["spread of parent"]
    three = fs.Config.model_validate(preset_with_sets(fs.Config, quick, ["seeds=3"], "format-spread"))
    assert len(three.holm_family) == 1 + 9 + 9  # the spreads of the parent and 9 trained models; 9 diffs
    dec = preset_with_sets(se.Config, se.Config.presets()["quick"], ["decoder=smollm2-135m-instruct"], "se")
    assert len(se.Config.model_validate(dec).holm_family) == 11
    with pytest.raises(ValueError, match="holm_family must list every test"):
        fs.Config.model_validate(
            preset_with_sets(fs.Config, quick, ['holm_family=["spread of parent"]'], "fs")
        )
