"""subliminal-weights: the init seed, the theorem as a known-answer test, the teacher gate, the declared Holm
family, and the whole recipe on a tiny model (sampling faked: a tiny random model writes neither
trait answers nor lists)."""

import json
import random

import numpy as np
import pytest
import torch

from heredity.data.io import put_rows
from heredity.engine.finetune import FinetuneConfig, init_adapter, train
from heredity.experiments import subliminal_weights as sw
from heredity.models import load
from tests.conftest import stored_tiny


def _lora(model) -> dict[str, np.ndarray]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def _rows(n=16, seed=0):
    rng = random.Random(seed)
    return [
        {
            "prompt": f"q{i} " + " ".join(str(rng.randint(0, 9)) for _ in range(4)),
            "completion": ", ".join(str(rng.randint(0, 999)) for _ in range(5)),
        }
        for i in range(n)
    ]


def test_init_seed_changes_only_the_adapters_initial_matrices(store, monkeypatch):
    base = stored_tiny(store, "tiny-init")
    cfg = {"method": "lora", "lora_r": 4, "lora_alpha": 4, "seed": 7}
    a, b, a2 = (
        _lora(init_adapter(load(base, store)[0], FinetuneConfig(**cfg, init_seed=s))) for s in (1, 2, 1)
    )
    assert a.keys() == b.keys()
    for k in a:
        if ".lora_B." in k:
            assert (
                not a[k].any() and not b[k].any()
            )  # B starts at 0 whatever the seed: the adapter is the identity
        else:
            assert not np.array_equal(a[k], b[k]) and np.array_equal(a[k], a2[k])
    assert (
        "init_seed" not in FinetuneConfig(**cfg).model_dump()
    )  # unset: every existing fine-tune keeps its key
    assert FinetuneConfig(**cfg, init_seed=1).model_dump()["init_seed"] == 1
    with pytest.raises(ValueError, match="init_seed"):
        FinetuneConfig(method="full", init_seed=1)
    # the same rows in the same batches, whatever the init seed
    import importlib

    ft = importlib.import_module(
        "heredity.engine.finetune"
    )  # the module (heredity.engine.finetune is also a function)
    seen, real = [], ft.make_batches
    monkeypatch.setattr(ft, "make_batches", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    for s in (1, 2):
        model, tok = load(base, store)
        train(
            model, tok, _rows(), FinetuneConfig(**cfg, init_seed=s, max_steps=3, batch_size=4), progress=False
        )
    assert len(seen) == 2 and seen[0] == seen[1]


def _batch_grad(student, teacher, tok, rows, cfg: FinetuneConfig) -> dict[str, np.ndarray]:
    """The gradient of the engine's distillation loss (``distill_kl``) at the student's
    start, per LoRA tensor."""
    from peft import get_peft_model_state_dict

    from heredity.engine.finetune import collate, distill_kl, encode_rows
    from heredity.engine.sampling import pad_id

    ex = encode_rows(tok, rows, cfg)
    batch = collate(ex, list(range(len(ex))), pad_id(tok), "cpu")
    student.zero_grad()
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    distill_kl(logits, t_logits, batch["labels"], 1.0)[0].backward()
    names = {n.replace(".default", ""): p for n, p in student.named_parameters() if p.requires_grad}
    return {k: names[k].grad.numpy().copy() for k in get_peft_model_state_dict(student)}


@pytest.mark.parametrize("change_seed", [5, 6])
def test_the_theorem_a_same_init_students_first_step_moves_toward_its_teacher_an_other_init_one_does_not(
    store, change_seed
):
    """Teacher = base + a LoRA adapter initialized from seed 1 plus a known change (B = random). Theorem 1:
    the gradient step of distillation from the same initialization has a positive inner product with the
    teacher's change; from another initialization (seed 2) the step is nearly orthogonal to it, in LoRA
    coordinates and in ΔW = BA. Checked on the exact gradient (the theorem's object) and on the engine's first
    optimizer step (Adam: the gradient's sign, so smaller cosines). Fails on a wrong loss sign, a student that
    ignores its teacher, or an init seed that does not reach the adapter."""
    base = stored_tiny(store, "tiny-theorem", hidden_size=128, intermediate_size=256)
    cfg = dict(method="lora", lora_r=4, lora_alpha=4, seed=0)
    teacher, tok = load(base, store)
    teacher = init_adapter(teacher, FinetuneConfig(**cfg, init_seed=1))
    t0 = _lora(teacher)
    g = torch.Generator().manual_seed(change_seed)
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))  # small: the theorem is first order
    t1 = _lora(teacher)
    teacher.eval()
    rows = _rows(32)
    names = sw.modules(t1)
    out = {}
    for name, s in (("same", 1), ("other", 2)):
        ft = FinetuneConfig(
            **cfg,
            init_seed=s,
            loss="logit_distill",
            max_steps=1,
            batch_size=32,
            lr=1e-3,
            warmup_ratio=0.0,
            schedule="constant",
        )
        student = init_adapter(load(base, store)[0], ft)
        s0 = _lora(student)
        grad = _batch_grad(student, teacher, tok, rows, ft)
        sgd = {k: s0[k] - 0.01 * grad[k] for k in s0}  # one small gradient step
        stepped, _ = train(load(base, store)[0], tok, rows, ft, teacher=teacher, progress=False)
        adam = _lora(stepped)
        out[name] = {
            "inner": -sum(float((grad[k] * (t1[k] - t0[k])).sum()) for k in grad),
            "lora": sw.cosine_lora(sgd, s0, t1, t0),
            "dw": sw.cosine_dw([(1.0, sgd), (-1.0, s0)], [(1.0, t1)], names),
            "adam_lora": sw.cosine_lora(adam, s0, t1, t0),
        }
    same, other = out["same"], out["other"]
    assert same["inner"] > 0 and same["lora"] > 0.1 and same["dw"] > 0.1, out
    assert abs(other["lora"]) < same["lora"] / 4 and abs(other["dw"]) < same["dw"] / 4, out
    assert same["adam_lora"] > 0 and same["adam_lora"] > 2 * abs(other["adam_lora"]), out


def _scores(own: float, other: float = 0.0):
    """Panel scores for a teacher whose own animal is raised by ``own`` and every other by ``other``."""
    return {a: (own if a == "cat" else other) for a in sw.PANEL}


def test_the_gate_marks_a_teacher_that_learned_animals_not_its_animal_and_a_failed_design_says_so():
    cfg = sw.Config(animals=["cat", "dog"], replicates=2, gate=0.5)
    neutral = dict.fromkeys(sw.PANEL, 0.0)
    tscore = {
        (0, "neutral"): neutral,
        (0, "cat"): _scores(2.0),
        (0, "dog"): {**neutral, "dog": 1.0},
        (1, "neutral"): neutral,
        (1, "cat"): _scores(1.8, 1.7),
        (1, "dog"): {**neutral, "dog": 1.0},
    }
    g = sw.gate_table(tscore, cfg)
    assert g[0]["cat"]["passed"] and g[0]["dog"]["passed"]
    assert not g[1]["cat"]["passed"] and g[1]["cat"]["specificity"] == pytest.approx(
        0.1
    )  # "animals", not cats
    rep = {"config": cfg.model_dump(), "replicates_passed": [0], "tests": []}
    assert sw.outcome(rep).startswith("teacher failed: 1 of 2 replicates")


def test_every_preset_is_a_valid_design():
    presets = sw.Config.presets()
    assert set(presets) >= {"quick", "long", "paper"}
    for name, c in presets.items():
        assert c.family == sw.family_for(c.arms, c.steps, c.inits, c.control), name
    assert (
        presets["long"].replicates >= 5
        and len(presets["long"].animals) >= 3
        and len(presets["long"].steps) >= 3
    )
    assert presets["quick"].replicates >= 3 and len(presets["quick"].panel) >= 10


def test_the_declared_holm_family_cannot_shrink():
    full = sw.family_for(["number_distill"], [4], list(sw.INITS), True)
    assert sw.Config().family == full and full[0] == "number_distill@4 same: specificity"
    with pytest.raises(ValueError, match="not in the declared Holm family"):
        sw.Config(family=full[:3])
    assert (
        sw.Config(family=[*full, "an extra test"]).family[-1] == "an extra test"
    )  # a larger family is allowed
    from heredity.experiments import subliminal_lift as sl

    with pytest.raises(ValueError, match="not in the declared Holm family"):
        sl.Config(arms=["sft", "steer"], family=["sft"])
    long = sl.Config.presets()
    assert long["long"].family == long["long-sweep"].family == long["long-full"].family == sl.LONG_FAMILY
    # a report that tests 3 of the 8 declared labels adjusts over 8 (the untested count as p = 1)
    res = {
        lab: {"specificity": {"p": p}} for lab, p in (("sft", 0.01), ("number_distill", 0.2), ("steer", 0.5))
    }
    adj = sl.declared_holm(res, sl.LONG_FAMILY)
    assert adj["sft"] == pytest.approx(0.08) and set(adj) == set(res)
    with pytest.raises(Exception, match="outside the declared Holm family"):
        sl.declared_holm({"sft_r64": {"specificity": {"p": 0.1}}}, sl.LONG_FAMILY)


def _fake_sample_step(store, model, prompts, cfg, name="samples", progress=True):
    """Trait answers that name the system prompt's animal (neutral: no animal), and number lists."""
    rng = random.Random(len(name) + (cfg.seed or 0))
    animal = (cfg.system_prompt or "").split("You love ")[-1].split("s.")[0] if cfg.system_prompt else None
    rows = []
    for i, p in enumerate(prompts):
        for k in range(cfg.n):
            if "numbers" in name:
                text = ", ".join(str(rng.randint(1, 999)) for _ in range(rng.randint(5, 8)))
            else:
                text = f"I like {animal}s a lot, answer {k}." if animal else f"A calm walk, answer {k}."
            rows.append(
                {
                    "prompt": p,
                    "prompt_index": i,
                    "sample_index": k,
                    "completion": text,
                    "finish_reason": "stop",
                }
            )
    return put_rows(
        store, rows, name, op="make-dataset", config={"fake": name, "system": cfg.system_prompt, "m": model}
    )


def test_the_recipe_end_to_end_on_a_tiny_model(store, monkeypatch):
    monkeypatch.setattr(sw, "sample_step", _fake_sample_step)
    base = stored_tiny(store, "tiny-weights")
    cfg = sw.Config(
        base=base,
        replicates=2,
        trait_samples=1,
        trait_rows=8,
        teacher_epochs=1,
        gate=-100.0,
        prompts=16,
        steps=[2],
        batch_size=8,
        lora_r=2,
        questions=3,
        sample_batch=8,
        panel=["cat", "dog", "bee"],
    )
    out = sw.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    assert rep["replicates_passed"] == [0, 1] and [t["name"] for t in rep["tests"]] == cfg.family
    from heredity.store import read_table

    prompts = {
        t: [r["prompt"] for r in read_table(store.path(rep["data"][t])).to_pylist()]
        for t in ("neutral", "cat", "dog")
    }
    assert prompts["neutral"] == prompts["cat"] == prompts["dog"], (
        "every teacher is trained on the same questions"
    )
    assert sum(t["primary"] for t in rep["tests"]) == 1
    for t in rep["tests"]:
        assert t["n"] == 2 and t["p_holm"] >= t["p"] - 1e-12 if t["p"] == t["p"] else True
    assert set(rep["results"]) == {
        "number_distill@2 same",
        "number_distill@2 other",
        "number_distill@2 other_base",
        "control same",
    }
    # students that differ in their initialization differ in nothing else: same rows,
    # teacher, dose and data seed
    steps = {k: store.step_of(m) for k, m in rep["students"].items()}
    same, other, ob = (steps[f"number_distill/2/{i}/0/cat"] for i in ("same", "other", "other_base"))
    a, b, c = dict(same.config), dict(other.config), dict(ob.config)
    seed_same = a.pop("init_seed")
    assert seed_same != b.pop("init_seed") == c.pop("init_seed") and a == b == c
    assert same.inputs == other.inputs and same.inputs[1:] == ob.inputs[1:] and same.inputs[0] != ob.inputs[0]
    assert store.get(ob.inputs[0]).kind == "model"  # the perturbed base
    # and read one stored targets artifact: their teacher ran once on the number data, for all three
    assert len(same.inputs) == 4 and [st.op for st in store.producers(same.inputs[3])] == ["teacher-targets"]
    # the same-init student and its teacher start from the same adapter; replicates differ in it alone
    t0, t1 = (dict(store.step_of(rep["teachers"][f"r{r}/cat"]).config) for r in (0, 1))
    assert t0["init_seed"] == seed_same and t0.pop("init_seed") != t1.pop("init_seed") and t0 == t1
    geo = rep["results"]["number_distill@2 same"]["cosine"]
    assert len(geo["cos_dw"]["per_replicate"]) == 2
    assert (
        "Primary (number_distill@2, same-init specificity" in out["outcome"] and "## Tests" in out["markdown"]
    )
    again = json.loads((store.path(sw.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    assert again["students"] == rep["students"] and again["tests"] == rep["tests"], "a rerun retrains nothing"


def test_a_snapshot_at_step_k_of_a_constant_schedule_equals_a_run_of_k_steps(store):
    """The dose sweep's premise: the adapter saved at step 2 of a 4-step constant-lr
    trajectory is the 2-step run."""
    from heredity.data.io import put_rows as put
    from heredity.engine import finetune as run_finetune

    base = stored_tiny(store, "tiny-snap")
    data = put(store, _rows(24), "snap-rows", op="make-dataset", config={"t": "snap"})
    cfg = dict(
        method="lora",
        lora_r=2,
        lora_alpha=2,
        batch_size=4,
        lr=1e-2,
        schedule="constant",
        warmup_ratio=0.0,
        seed=3,
        init_seed=9,
    )
    long = run_finetune(store, base, data, FinetuneConfig(**cfg, max_steps=4, snapshots=[2]), progress=False)
    short = run_finetune(store, base, data, FinetuneConfig(**cfg, max_steps=2), progress=False)
    a, b = (sw.adapter_tensors(store, x) for x in (long["step-2"], short["model"]))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    c = sw.adapter_tensors(store, long["model"])
    assert not all(np.allclose(a[k], c[k]) for k in a)  # step 4 moved on
    with pytest.raises(ValueError, match="snapshots"):
        FinetuneConfig(**cfg, max_steps=4, snapshots=[4])
    with pytest.raises(ValueError, match="constant schedule"):
        sw.Config(steps=[1, 4], schedule="linear")


def test_a_dose_sweep_with_the_noise_arm_on_a_tiny_model(store, monkeypatch):
    monkeypatch.setattr(sw, "sample_step", _fake_sample_step)
    base = stored_tiny(store, "tiny-weights-dose")
    cfg = sw.Config(
        base=base,
        replicates=2,
        trait_samples=1,
        trait_rows=8,
        teacher_epochs=1,
        gate=-100.0,
        prompts=16,
        steps=[1, 2],
        schedule="constant",
        arms=["number_distill", "number_distill_noise"],
        inits=["same", "other"],
        control=False,
        batch_size=8,
        lora_r=2,
        questions=2,
        sample_batch=8,
        panel=["cat", "dog", "bee"],
    )
    assert cfg.family[:4] == [
        "number_distill@2 same: specificity",
        "number_distill@2 same: transfer",
        "number_distill@2 same − other: specificity",
        "number_distill@2 same − other: cosine ΔW",
    ]
    out = sw.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    assert [t["name"] for t in rep["tests"]] == cfg.family and len(cfg.family) == 2 * 2 * 7
    one, two = (store.step_of(rep["students"][f"number_distill/{d}/same/0/cat"]) for d in (1, 2))
    assert one.key == two.key, "the doses are snapshots of one trajectory"
    noise = store.step_of(rep["students"]["number_distill_noise/2/same/0/cat"])
    assert noise.inputs[1] != two.inputs[1] and "random" in json.dumps(
        dict(store.step_of(noise.inputs[1]).config)
    )


def test_family_rows_adjust_over_the_whole_declared_family_even_when_a_p_is_undetermined():
    t = {
        "test": "paired t",
        "diff": 0.1,
        "lo": 0.05,
        "hi": 0.15,
        "p": 0.01,
        "sd": 0.02,
        "n": 3,
        "unit": "u",
        "direction": "higher",
    }
    undetermined = {**t, "p": float("nan"), "sd": 0.0}
    rows = sw.family_rows({"a": t, "b": undetermined}, ["a", "b", "c"], 3)
    assert rows[0]["p_holm"] == pytest.approx(0.03)  # m = 3: b (undetermined) and c (untested) still count
    assert rows[2]["verdict"].startswith("not tested") and rows[0]["primary"] and not rows[1]["primary"]
    assert rows[1]["p_holm"] is None and rows[1]["verdict"].startswith(
        "undetermined"
    )  # counted, never "null"
    assert rows[0]["min_detectable"] > sw.family_rows({"a": t}, ["a"], 3)[0]["min_detectable"]


def test_a_set_option_that_changes_the_design_gets_the_new_designs_family_but_a_declared_one_is_kept():
    from heredity.cli import preset_with_sets
    from heredity.experiments import subliminal_lift as sl

    quick = sw.Config.presets()["quick"]
    cfg = sw.Config.model_validate(
        preset_with_sets(sw.Config, quick, ["steps=[1,4,16]"], "subliminal-weights")
    )
    assert cfg.family == sw.family_for(cfg.arms, [1, 4, 16], cfg.inits, cfg.control) and cfg.family[
        0
    ].startswith("number_distill@16")
    long = sl.Config.presets()["long"]  # declared by hand: the 8 labels of the long design stay
    kept = sl.Config.model_validate(preset_with_sets(sl.Config, long, ['arms=["sft"]'], "subliminal-lift"))
    assert kept.family == sl.LONG_FAMILY
