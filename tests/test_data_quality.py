"""data-quality end to end on tiny parts (a random tiny writer and scorer, a 2-iteration pretrained base): the
held-out prompts and constraint pairs never reach a training set, the declared family is the family tested, a
rerun computes nothing, a bad instruction file is refused before any compute; and the statistics' pieces on
constructed cases (a judge that prefers length does not decide the length-controlled win rate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import stored_tiny

from heredity.data.constraints import held_out_pairs, kind_pair
from heredity.engine import FinetuneConfig
from heredity.engine.pretrain import PretrainConfig
from heredity.engine.reward import RewardConfig
from heredity.errors import HeredityError
from heredity.experiments.data_quality import Base, Config, run
from heredity.experiments.data_quality_stats import _lc_win, contrast, distinct2, family
from heredity.store import Store, read_table


def tiny_config(store: Store, **overrides) -> Config:
    tiny = stored_tiny(store, "writer")
    return Config(
        bases=[
            Base(
                sizes=[6],
                noisy_sizes=[6],
                seeds=2,
                train=FinetuneConfig(method="full", lr=1e-3, max_steps=2, batch_size=4, max_length=96),
            )
        ],
        vocab_size=300,
        pretrain=PretrainConfig(hidden=32, layers=1, heads=2, intermediate=64, context=64, iters=2),
        pool_per_kind=3,
        pool_constraints=8,
        writer=tiny,
        scorer=tiny,
        max_new_tokens=6,
        reward=RewardConfig(epochs=1, batch_size=8, max_length=96),
        eval_per_kind=2,
        eval_constraints=6,
        boot=100,
        **overrides,
    )


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    home = tmp_path_factory.mktemp("dq")
    store = Store(home)
    config = tiny_config(store)
    out = run(store, config, progress=False)
    report = json.loads((store.path(out["report"]) / "report.json").read_text())
    return home, config, out, report


def test_held_out_prompts_and_pairs_never_reach_a_training_set(ran):
    home, _, _, report = ran
    store = Store(home)

    def prompts(artifact) -> set[str]:
        return {r["prompt"] for r in read_table(store.path(artifact.id)).to_pylist()}

    datasets = store.list("dataset")
    held = set().union(*(prompts(a) for a in datasets if a.name == "quality-eval"))
    pool = read_table(store.path(report["lineage"]["scored_pool"])).to_pylist()
    assert held and not held & {r["prompt"] for r in pool}
    pairs = held_out_pairs()
    assert any(r["constraints"] for r in pool)
    assert all(kind_pair(r) not in pairs for r in pool if r["constraints"])
    selected = [a for a in datasets if a.name.startswith("dq-")]  # every arm's rows, every seed
    assert len({a.id for a in selected}) >= 5  # random, ifd, verified, noisy differ by seed; all once
    for a in selected:
        assert prompts(a) and not prompts(a) & held


def test_the_declared_family_is_the_family_tested(ran):
    _, config, _, report = ran
    names = [t["name"] for t in report["tests"]]
    assert names == config.holm_family == family(config)
    assert names == [f"tiny-base: {r}@6 vs random@6" for r in ("longest", "ifd", "reward", "verified")] + [
        "tiny-base: verified@6 vs noisy@18"
    ]
    assert {t["unit"] for t in report["tests"]} == {"training seeds"}
    with pytest.raises(ValueError, match="holm_family must list every test"):
        Config(**{**config.model_dump(), "holm_family": names[:-1]})
    with pytest.raises(ValueError, match="sizez"):
        Base(sizez=[3])


def test_a_rerun_computes_nothing(ran, monkeypatch):
    home, config, out, report = ran
    compute = Store._compute

    def computed(self, op, *a, **k):  # the report alone: it holds its own run time
        assert op == "report-data-quality", f"the rerun computed step {op}"
        return compute(self, op, *a, **k)

    monkeypatch.setattr(Store, "_compute", computed)
    again = run(Store(home), config, progress=False)
    assert again["markdown"] == out["markdown"]


@pytest.mark.parametrize(
    "text, says",
    [
        (
            '{"instruction": "Say hi.", "output": "hi"}\n{"instruction": "Say yo."}\n',
            "jsonl:2: 'output' is missing",
        ),
        (b'{"prompt": "caf\xe9", "completion": "x"}\n', "UTF-8"),
    ],
)
def test_a_bad_instruction_file_is_refused_before_any_compute(tmp_path, monkeypatch, text, says):
    store = Store(tmp_path / "home")
    config = tiny_config(store, instruction_file=str(tmp_path / "mine.jsonl"))
    path = tmp_path / "mine.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())

    def computed(self, op, *a, **k):
        raise AssertionError(f"computed step {op} before refusing the file")

    monkeypatch.setattr(Store, "_compute", computed)
    with pytest.raises(HeredityError, match=says) as e:
        run(store, config, progress=False)
    assert "\n" not in str(e.value)


def test_a_users_instruction_file_joins_the_pool_and_can_be_selected(tmp_path):
    """The paper preset's path on tiny parts: an Alpaca JSON file's rows enter the pool as written (writer
    ``file``), are scored with the rest, and a rule can pick them: its longest answer is the pool's longest,
    so ``longest`` selects it."""
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Describe the sea.", "input": "In one long sentence.", "output": "wave " * 80},
        {"instruction": "Count to three.", "output": "1, 2, 3"},
    ]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows))
    store = Store(tmp_path / "home")
    out = run(store, tiny_config(store, instruction_file=str(path)), progress=False)
    report = json.loads((store.path(out["report"]) / "report.json").read_text())
    pool = read_table(store.path(report["lineage"]["scored_pool"])).to_pylist()
    mine = [(r["prompt"], r["completion"]) for r in pool if r["writer"] == "file"]
    assert mine == [
        ("Name a colour.", "Blue."),
        ("Describe the sea.\n\nIn one long sentence.", "wave " * 80),
        ("Count to three.", "1, 2, 3"),
    ]
    longest = [a for a in store.list("dataset") if a.name.startswith("dq-") and "longest" in a.name]
    assert longest
    for a in longest:
        picked = {r["completion"] for r in read_table(store.path(a.id)).to_pylist()}
        assert "wave " * 80 in picked


def test_a_grid_without_the_tiny_base_still_judges_with_the_pipelines_reward_models(ran):
    """The reward models start from the chatgpt pipeline's base whichever bases the grid trains (the paper and
    long-smollm2 presets train none of it): the same pool, RMs and held-out set as a grid that does."""
    home, config, _, report = ran
    store = Store(home)
    other = Base(
        model=config.writer, sizes=[6], rules=["random", "verified"], noisy_sizes=[], all_data=False, seeds=1,
        train=config.bases[0].train,
    )  # fmt: skip
    cfg = Config(**{**config.model_dump(), "bases": [other.model_dump()], "holm_family": None})
    out = run(store, cfg, progress=False)
    again = json.loads((store.path(out["report"]) / "report.json").read_text())
    for k in ("pool", "scored_pool", "selection_rm", "judge_rm"):
        assert again["lineage"][k] == report["lineage"][k], k
    assert [t["name"] for t in again["tests"]] == [f"{config.writer}: verified@6 vs random@6"]
    assert {t["unit"] for t in again["tests"]} == {"held-out items, one trained model per arm"}


def test_the_paper_preset_asks_for_the_instruction_file():
    config = Config.presets()["paper"]
    with pytest.raises(HeredityError, match="--set instruction_file=PATH"):
        run(None, config, progress=False)


def test_a_judge_that_prefers_length_does_not_decide_the_length_controlled_win_rate():
    rng = np.random.default_rng(0)
    dlen = rng.normal(6, 6, 4000)  # the arm answers longer
    win = (rng.random(4000) < 1 / (1 + np.exp(-3 * np.tanh(dlen / 6)))).astype(float)  # length alone
    assert win.mean() > 0.75
    assert _lc_win(dlen, win, float(np.std(dlen))) == pytest.approx(0.5, abs=0.06)
    # a judge with a real preference beyond length keeps it at equal length
    win2 = (rng.random(4000) < 1 / (1 + np.exp(-(1.0 + 3 * np.tanh(dlen / 6))))).astype(float)
    assert _lc_win(dlen, win2, float(np.std(dlen))) == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.06)


def test_one_seed_is_a_claim_about_items_and_two_about_training():
    def ev(outcomes):
        return {"correct": outcomes, "strict": [None] * len(outcomes)}

    one = contrast([ev([1, 1, 1, 0, 1, 1])], [ev([0, 0, 1, 0, 0, 1])])
    assert one["test"] == "McNemar exact" and one["unit"].startswith("held-out items")
    assert one["diff"] == pytest.approx(3 / 6)
    two = contrast([ev([1, 1, 0, 0]), ev([1, 1, 1, 0])], [ev([0, 0, 0, 1]), ev([1, 0, 0, 0])])
    assert two["test"] == "Welch t" and two["unit"] == "training seeds"
    assert two["diff"] == pytest.approx(0.625 - 0.25)


def test_distinct_bigrams():
    assert distinct2(["a b a b", "a b"]) == pytest.approx(2 / 4)
    assert np.isnan(distinct2(["one"]))
