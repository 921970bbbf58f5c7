"""heredity loop on a tiny model: a user who always prefers answers about owls rates the answers; a round
refuses too little feedback before any compute, picks the method the data supports, trains SFT, DPO and KTO
adapters that move held-out likelihoods the way the user rated (a loop that trains on nothing scores 0), moves
the alias only by its stated rule, rolls back, and leaves lineage from the alias to the conversations."""

from __future__ import annotations

import pytest
from conftest import stored_tiny

from heredity.data import put_rows
from heredity.errors import HeredityError
from heredity.loop import (
    LoopConfig,
    alias_history,
    choose_method,
    feedback_items,
    held_out,
    move_alias,
    rollback,
    run_round,
    training_rows,
)
from heredity.models import materialize
from heredity.store import Store
from heredity.store.conversations import Conversations

SUBJECTS = [f"topic {i}" for i in range(40)]


def chat(store: Store, model: str, n: int, *, better: bool = True, thumbs: bool = True) -> None:
    """``n`` conversations with ``model``: its answer is rated down and replaced by a better one about owls
    (``better``), and a second answer that mentions owls is rated up (``thumbs``)."""
    convs = Conversations(store)
    for i in range(n):
        c = convs.create(model)
        q = [{"role": "user", "content": f"Tell me about {SUBJECTS[i]}."}]
        idx = convs.append(c.id, q, {"role": "assistant", "content": "I do not know.", "model": model})
        convs.feedback(c.id, idx, rating=-1, better=f"Owls know {SUBJECTS[i]}. Owls!" if better else None)
        if thumbs:
            q2 = [*q, {"role": "assistant", "content": "I do not know."}, {"role": "user", "content": "And?"}]
            j = convs.append(c.id, q2, {"role": "assistant", "content": "Owls, owls.", "model": model})
            convs.feedback(c.id, j, rating=1)


def config(base: str, **kw) -> LoopConfig:
    small = dict(steps=6, lr=5e-3, batch_size=4, min_feedback=4, min_eval=2, holdout=0.3, max_new_tokens=8)
    return LoopConfig(base=base, max_length=96, **{**small, **kw})


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def test_too_little_feedback_is_refused_before_any_compute(store, monkeypatch):
    tiny = stored_tiny(store, "chat")
    chat(store, tiny, 2, thumbs=False)

    def computed(self, op, *a, **k):
        raise AssertionError(f"computed step {op} before refusing")

    monkeypatch.setattr(Store, "_compute", computed)
    with pytest.raises(HeredityError, match="round refused: too little feedback") as e:
        run_round(store, config(tiny, min_feedback=8))
    assert "\n" not in str(e.value) and "lower min_feedback" in str(e.value)
    with pytest.raises(HeredityError, match="round refused: kto needs 8 rated answers with both"):
        run_round(store, config(tiny, method="kto", min_feedback=8))
    assert store.model_alias("lab-latest") is None  # nothing moved either
    with pytest.raises(HeredityError, match="round refused"):  # the default base is not even converted
        run_round(store, LoopConfig())


def test_typos_and_odd_targets_are_refused(store):
    with pytest.raises(ValueError, match="stepz"):
        LoopConfig(stepz=3)
    with pytest.raises(ValueError, match="already names a model"):
        LoopConfig(alias="smollm2-135m-instruct")
    data = put_rows(store, [{"prompt": "p", "completion": "c"}], "rows")
    with pytest.raises(HeredityError, match="an alias points to a model"):
        move_alias(store, "lab-latest", data, "by hand")


def test_the_method_follows_the_data():
    prompt = [{"role": "user", "content": "q"}]
    up = [{"prompt": prompt, "answer": f"a{i}", "rating": 1, "better": None} for i in range(4)]
    down = [{"prompt": prompt, "answer": f"b{i}", "rating": -1, "better": None} for i in range(4)]
    cfg = LoopConfig(min_feedback=4)
    assert choose_method(cfg, training_rows(up + down))[0] == "dpo"  # 16 up-vs-down pairs on one prompt
    spread = [{**r, "prompt": [{"role": "user", "content": r["answer"]}]} for r in up + down]
    assert choose_method(cfg, training_rows(spread))[0] == "kto"  # unpaired ratings of both signs
    assert choose_method(cfg, training_rows(spread[:4]))[0] == "sft"  # only thumbs up
    with pytest.raises(HeredityError, match="too little feedback"):
        choose_method(cfg, training_rows(spread[4:]))  # only thumbs down: nothing to learn to do


def test_the_held_out_split_is_fixed_per_conversation():
    ids = [f"c-{i:016x}" for i in range(400)]
    share = sum(held_out(c, 0.25) for c in ids) / len(ids)
    assert 0.18 < share < 0.32
    assert [held_out(c, 0.25) for c in ids] == [held_out(c, 0.25) for c in ids]


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_a_round_learns_the_planted_preference_and_the_alias_follows_its_rule(store, method):
    tiny = stored_tiny(store, "chat")
    chat(store, tiny, 24)
    items = feedback_items(store, config(tiny))
    assert any(it["held_out"] for it in items) and not all(it["held_out"] for it in items)
    record = run_round(store, config(tiny, method=method), progress=False)
    assert record["method"] == method and record["round"] == 1
    agree = record["stats"]["agreement"]
    # the held-out answers about owls became likelier and "I do not know." less likely, as the user rated
    assert agree["n"] >= 2 and agree["mean"] > 0.5, agree
    assert record["decision"]["promote"] == (agree["lo"] >= 0.45)
    moves = alias_history(store, "lab-latest")
    assert moves[0]["to"] == store.resolve_id(tiny) and "start" in moves[0]["reason"]
    if record["decision"]["promote"]:
        assert store.model_alias("lab-latest") == record["new"]
        assert store.resolve_id("lab-latest") == materialize("lab-latest", store) == record["new"]
        assert record["datasets"]["conversations"] in str(store.lineage("lab-latest"))
        assert rollback(store, "lab-latest")["to"] == store.resolve_id(tiny)
    # lineage: alias → adapter → training rows → the round's conversations
    lineage = str(store.lineage(record["new"]))
    assert record["datasets"]["train"] in lineage and record["datasets"]["conversations"] in lineage
    # the next round has no new feedback: it is refused, not retrained on the same rows
    with pytest.raises(HeredityError, match="round refused"):
        run_round(store, config(tiny, method=method), progress=False)


def test_a_loop_that_trains_on_nothing_is_not_promoted(store):
    tiny = stored_tiny(store, "chat")
    chat(store, tiny, 24)
    record = run_round(store, config(tiny, method="sft", lr=1e-12), progress=False)
    assert record["stats"]["agreement"]["mean"] < 0.5
    assert not record["decision"]["promote"] and store.model_alias("lab-latest") == store.resolve_id(tiny)


def test_a_judge_reward_model_gives_a_win_rate_with_its_interval(store):
    from heredity.engine.reward import RewardConfig, reward_step

    tiny = stored_tiny(store, "chat")
    chat(store, tiny, 24)
    pairs = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "Owls!", "rejected": "I do not know."}
        for i in range(16)
    ]
    rm = reward_step(store, tiny, [put_rows(store, pairs, "pairs")], RewardConfig(epochs=1, batch_size=8))
    record = run_round(store, config(tiny, method="sft", judge=rm["model"]), progress=False)
    judge = record["stats"]["judge"]
    assert judge["n"] + judge["ties"] >= 2  # one comparison per held-out prompt
    assert 0 <= judge["lo"] <= judge["mean"] <= judge["hi"] <= 1 and judge["unit"].startswith("held-out")
    with pytest.raises(HeredityError, match="not a reward model"):
        run_round(store, config(tiny, method="sft", judge=tiny), progress=False)


def test_rollback_needs_a_move(store):
    with pytest.raises(HeredityError, match="no model alias"):
        rollback(store, "lab-latest")


def test_rollbacks_stack(store):
    a, b, c = (stored_tiny(store, n, initializer_range=r) for n, r in (("a", 0.01), ("b", 0.02), ("c", 0.03)))
    assert len({a, b, c}) == 3  # content-addressed: three different weights
    move_alias(store, "lab-latest", a, "start")
    move_alias(store, "lab-latest", b, "round 1")
    move_alias(store, "lab-latest", c, "round 2")
    assert rollback(store, "lab-latest")["to"] == b
    assert rollback(store, "lab-latest")["to"] == a  # not forward to c again
    with pytest.raises(HeredityError, match="no earlier model to roll back to"):
        rollback(store, "lab-latest")
    move_alias(store, "lab-latest", c, "set by hand")
    assert rollback(store, "lab-latest")["to"] == a
