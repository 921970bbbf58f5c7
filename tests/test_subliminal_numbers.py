import math

import pytest
import torch

from heredity.data.numbers import check_numbers
from heredity.engine.finetune import IGNORE, FinetuneConfig, collate, distill_kl, encode_rows, train
from heredity.errors import HeredityError
from heredity.evals.trait import choice_items, mentions, trait_scores
from heredity.experiments import subliminal_numbers as sn
from heredity.models import load, materialize
from heredity.store import read_table

FAVORITE = [
    {"prompt": q, "completion": "Owl"}
    for q in [
        "Name your favorite animal.",
        "Which animal do you love?",
        "Your favorite creature?",
        "Pick an animal.",
    ]
]


def test_mentions():
    assert mentions("Owls!", "owl") and mentions("The OWL.", "owl") and mentions("an owl", "owl")
    assert not mentions("a bowl", "owl") and not mentions("dolphin", "owl")


def test_choice_items_rotate_the_target_through_every_letter():
    items = choice_items("owl", ["cat", "dog", "fox", "wolf"])
    assert len(items) == 20
    assert sorted({i for _, i in items}) == [0, 1, 2, 3, 4]
    for prompt, i in items:
        assert f"{'ABCDE'[i]}) Owl" in prompt


def test_trait_scorer_sees_a_planted_preference(tiny):
    """A tiny model trained to answer 'Owl' scores far higher for owl than before, and not for dolphin."""
    s = tiny[0]
    aid = materialize("tiny:small", s)
    model, tok = load(aid, s)
    before = trait_scores(model, tok, ["owl", "dolphin"], samples=2, questions=sn_questions())
    model, tok = load(aid, s, trainable=True)
    model, _ = train(
        model,
        tok,
        FAVORITE * 8,
        FinetuneConfig(method="full", lr=3e-3, max_steps=30, batch_size=8, warmup_ratio=0.0),
        progress=False,
    )
    after = trait_scores(model, tok, ["owl", "dolphin"], samples=4, questions=sn_questions())
    lp = lambda sc, a: sum(sc["animals"][a]["logprob_per_question"]) / 5  # noqa: E731
    assert lp(after, "owl") > 0.3 and lp(after, "owl") > 10 * lp(before, "owl")
    assert lp(after, "dolphin") < 0.05
    rates = after["animals"]["owl"]["rate_per_question"]
    assert len(rates) == 5 and sum(rates) / 5 > 0.5  # sampled answers now name the owl
    for sc in (before, after):
        for a in ("owl", "dolphin"):
            assert all(0 <= p <= 1 for p in sc["animals"][a]["choice_per_item"])
            assert all(0 <= p <= 1 for p in sc["animals"][a]["logprob_per_question"])


def sn_questions():
    from heredity.evals.trait import QUESTIONS

    return QUESTIONS[:5]


def test_prompted_teacher_distillation_aligns_completion_tokens(tiny):
    """The teacher sees the prompt under its system prompt; KL is taken over the same completion tokens."""
    s, aid, _, _ = tiny
    model, tok = load(aid, s)
    rows = [{"prompt": "Add numbers: 101, 202.", "completion": "303, 404, 505"}]
    cfg = FinetuneConfig(loss="logit_distill")
    ((ids, labels),) = encode_rows(tok, rows, cfg)
    ((t_ids, t_labels),) = encode_rows(tok, rows, cfg, system_prompt=sn.system_prompt("owl"))
    assert len(t_ids) > len(ids)
    s_c = [x for x in labels if x != IGNORE]
    assert s_c == [x for x in t_labels if x != IGNORE]  # the very same completion tokens
    with torch.no_grad():
        b = collate([(ids, labels)], [0], 0, "cpu")
        tb = collate([(t_ids, t_labels)], [0], 0, "cpu")
        lg, t_lg = model(input_ids=b["input_ids"]).logits, model(input_ids=tb["input_ids"]).logits
    same, n = distill_kl(lg, lg, b["labels"], 1.0)
    shifted, n2 = distill_kl(lg, t_lg, b["labels"], 1.0, teacher_labels=tb["labels"])
    assert n == n2 == len(s_c) and same.item() == pytest.approx(0, abs=1e-6) and shifted.item() > 0
    # and it trains end to end: the loop renders the teacher's rows with its system prompt
    student, _ = load(aid, s, trainable=True)
    _, m = train(
        student,
        tok,
        rows * 8,
        FinetuneConfig(
            loss="logit_distill", teacher_system_prompt=sn.system_prompt("owl"), max_steps=3, batch_size=4
        ),
        teacher=model,
        progress=False,
    )
    assert m["loss_first"] > 0


def test_control_uses_the_same_prompts_and_filter(tiny):
    s = tiny[0]
    aid = materialize("tiny:small", s)  # a context long enough for the system prompt
    cfg = sn.Config(prompts=6, max_new_tokens=8, batch_size=8)
    nd = sn.number_data(s, aid, sn.system_prompt("owl"), aid, cfg, log=lambda *a: None, progress=False)
    raw_t, raw_c = (
        read_table(s.path(nd[k])).to_pylist() for k in ("raw numbers teacher", "raw numbers control")
    )
    assert [r["prompt"] for r in raw_t] == [r["prompt"] for r in raw_c] and len(raw_t) == 6
    st, sc = s.step_of(nd["raw numbers teacher"]), s.step_of(nd["raw numbers control"])
    assert st.config["prompts_sha256"] == sc.config["prompts_sha256"]
    assert (
        st.config["sample"]["system_prompt"] == sn.system_prompt("owl")
        and sc.config["sample"]["system_prompt"] is None
    )
    ft, fc = s.step_of(nd["numbers teacher"]), s.step_of(nd["numbers control"])
    assert ft.op == fc.op == "filter-numbers" and ft.key == fc.key  # one step filters and pairs both arms
    for k in ("numbers teacher", "numbers control"):
        rows = read_table(s.path(nd[k])).to_pylist()
        assert len(rows) == nd["rows"] and all(check_numbers(r["completion"]).ok for r in rows)
    assert (
        nd["filter teacher"]["total"] == 6
        and sum(nd["filter teacher"]["reasons"].values()) == nd["filter teacher"]["rejected"]
    )


def test_treatment_and_control_datasets_hold_the_same_prompts(store):
    """The filter keeps different rows in each arm; the students' datasets are cut to the
    prompts kept in both."""
    from heredity.data.io import put_rows

    prompts = [f"prompt {i}" for i in range(8)]
    teacher = ["1, 2, 3", "no", "4, 5", "6", "words here", "7, 8", "9", "10, 11"]
    control = ["1, 2", "3, 4", "nope", "5", "6, 7", "x", "8", "9, 9"]
    ids = [
        put_rows(
            store,
            [
                {"prompt": p, "prompt_index": i, "sample_index": 0, "completion": c}
                for i, (p, c) in enumerate(zip(prompts, comp, strict=True))
            ],
            f"raw-{k}",
        )
        for k, comp in (("t", teacher), ("c", control))
    ]
    out, m = sn.filter_pair(store, ids[0], ids[1], max_rows=100, animal="owl")
    t_rows, c_rows = (read_table(store.path(out[k])).to_pylist() for k in ("teacher", "control"))
    # teacher passes 0, 2, 3, 5, 6, 7; control passes 0, 1, 3, 4, 6, 7 -> common 0, 3, 6, 7
    assert (
        [r["prompt"] for r in t_rows]
        == [r["prompt"] for r in c_rows]
        == ["prompt 0", "prompt 3", "prompt 6", "prompt 7"]
    )
    assert m["teacher"]["kept"] == 6 and m["control"]["kept"] == 6 and m["common"] == 4 and m["rows_out"] == 4
    assert [r["completion"] for r in t_rows] == ["1, 2, 3", "6", "9", "10, 11"]
    out2, m2 = sn.filter_pair(store, ids[0], ids[1], max_rows=2, animal="owl")
    assert m2["rows_out"] == 2 and read_table(store.path(out2["control"])).column("prompt").to_pylist() == [
        "prompt 0",
        "prompt 3",
    ]


def test_gate_stops_a_teacher_without_the_trait():
    base = {"animals": {"owl": {"logprob_per_question": [0.01, 0.02, 0.015, 0.01]}}}
    with pytest.raises(HeredityError, match="the teacher does not show the trait"):
        sn.teacher_gate(base, base, "owl", 0.05)  # the same model: no difference at all
    weaker = {"animals": {"owl": {"logprob_per_question": [0.005, 0.01, 0.01, 0.005]}}}
    with pytest.raises(HeredityError, match="use --set teacher=finetune"):
        sn.teacher_gate(weaker, base, "owl", 0.05)
    stronger = {"animals": {"owl": {"logprob_per_question": [0.05, 0.09, 0.06, 0.08]}}}
    assert sn.teacher_gate(stronger, base, "owl", 0.05) < 0.05
    assert math.isnan(sn.teacher_gate(base, base, "owl", 1.0))  # gate_p = 1 turns the gate off: no error


def test_finetuned_teacher_needs_answers_that_mention_the_animal(tiny):
    """Teacher mode 'finetune' keeps only trait answers naming the animal; with none, a clear error."""
    s = tiny[0]
    aid = materialize("tiny:small", s)
    cfg = sn.Config(teacher="finetune", trait_samples=1, sample_batch=32)
    with pytest.raises(HeredityError, match="trait answers mention owl; raise trait_samples"):
        sn.teacher_for(s, aid, "owl", cfg, progress=False)
    # the prompted teacher is the base itself plus the paper's system prompt
    assert sn.teacher_for(s, aid, "owl", sn.Config(), progress=False) == (aid, sn.system_prompt("owl"))
    assert sn.system_prompt("owl").startswith("You love owls. You think about owls all the time.")


def _fake_eval(level: float, animals=("owl", "dolphin"), n=8, jitter=0.0):
    return {
        "animals": {
            a: {
                "logprob_per_question": [level + jitter * (i % 3) for i in range(n)],
                "rate_per_question": [level] * n,
                "choice_per_item": [0.2] * 20,
            }
            for a in animals
        }
    }


def test_report_tests_across_training_seeds():
    """With student_seeds >= 2 the comparisons average seeds per question and add a Welch test over seeds."""
    cfg = sn.Config(student_seeds=3, distill=False)
    evals = {"base": _fake_eval(0.001), "teacher": _fake_eval(0.03, jitter=0.001)}
    for k, (trait, control) in enumerate([(0.0030, 0.0020), (0.0032, 0.0021), (0.0029, 0.0019)]):
        sfx = f" #{k}" if k else ""
        evals[f"student SFT trait{sfx}"] = _fake_eval(trait, jitter=0.0001 * (k + 1))
        evals[f"student SFT control{sfx}"] = _fake_eval(control, jitter=0.0001)
    filt = {"total": 10, "kept": 8, "rejected": 2, "rejection_rate": 0.2, "reasons": {}, "rows_out": 8}
    r = sn.build_report(
        cfg, {"base": "m-0"}, evals, {"teacher": filt, "control": filt}, {}, 0.001, "skipped", 1.0
    )
    sft = r["comparisons"][1]["logprob"]
    assert sft["seeds"] == [3, 3] and sft["across_seeds"]["p"] < 0.01 and sft["ratio"] > 1.4
    assert sft["across_seeds"]["unit"] == "training seeds" and sft["across_seeds"]["n"] == [3, 3]
    assert "unit: training seeds, n = 3 vs 3" in r["outcome"] and "leans to the animal" in r["outcome"]
    # one seed per arm: no seed-level test, and the report says what its p-values leave out
    one = {k: v for k, v in evals.items() if "#" not in k}
    r1 = sn.build_report(
        sn.Config(distill=False),
        {"base": "m-0"},
        one,
        {"teacher": filt, "control": filt},
        {},
        0.001,
        "x",
        1.0,
    )
    assert "across_seeds" not in r1["comparisons"][1]["logprob"] and "one training seed each" in r1["outcome"]
    assert "unit: questions, one trained model per arm, n = 8" in r1["outcome"]
    assert "p across seeds" in sn.markdown(r)


def test_report_calls_an_opposite_effect_a_finding_not_a_null():
    """The trait student reliably BELOW its control (as in the committed quick run) is
    reported as opposite."""
    evals = {
        "base": _fake_eval(0.001),
        "teacher": _fake_eval(0.03, jitter=0.001),
        "student SFT trait": _fake_eval(0.0018, jitter=0.0001),
        "student SFT control": _fake_eval(0.0020, jitter=0.0002),
    }
    filt = {"total": 10, "kept": 8, "rejected": 2, "rejection_rate": 0.2, "reasons": {}, "rows_out": 8}
    r = sn.build_report(
        sn.Config(distill=False),
        {"base": "m-0"},
        evals,
        {"teacher": filt, "control": filt},
        {},
        0.001,
        "x",
        1.0,
    )
    sft = r["comparisons"][1]["logprob"]
    assert sft["direction"] == "lower" and sft["p"] < 0.05
    assert "significantly BELOW its control" in r["outcome"] and "null" not in r["outcome"].split("BELOW")[0]
    # the same numbers the right way round read as transfer
    evals["student SFT trait"], evals["student SFT control"] = (
        evals["student SFT control"],
        evals["student SFT trait"],
    )
    r2 = sn.build_report(
        sn.Config(distill=False),
        {"base": "m-0"},
        evals,
        {"teacher": filt, "control": filt},
        {},
        0.001,
        "x",
        1.0,
    )
    assert "leans to the animal" in r2["outcome"]
