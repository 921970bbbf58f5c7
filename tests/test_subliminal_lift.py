"""subliminal-lift end to end on a tiny model: every stage runs for real except the teachers' sampling,
replaced by program-written number lists (a tiny random model writes no valid lists; sampling
is tested on its own)."""

import json
import random

import pytest

from heredity.data.io import put_rows
from heredity.experiments import subliminal_lift as sl


def _fake_sample_step(store, model, prompts, cfg, name="samples", progress=True):
    rng = random.Random(hash(cfg.system_prompt or "") % 1000)
    rows = [
        {
            "prompt": p,
            "prompt_index": i,
            "sample_index": 0,
            "completion": ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(3, 8)))
            if i % 7
            else "no",
            "finish_reason": "stop",
        }
        for i, p in enumerate(prompts)
    ]
    return put_rows(store, rows, name, op="make-dataset", config={"fake": name, "system": cfg.system_prompt})


def test_the_pipeline_builds_twins_and_a_lift_matrix_per_arm(store, monkeypatch):
    monkeypatch.setattr(sl, "sample_step", _fake_sample_step)
    cfg = sl.Config(
        base="tiny:micro",
        animals=["owl", "cat"],
        format_warmup=0,
        prompts=24,
        student_seeds=2,
        arms=list(sl.ARMS),
        sweep_ranks=[2],
        sweep_full=True,
        steer_layer=1,
        rate_samples=2,
        sft_epochs=1.0,
        distill_epochs=1.0,
        batch_size=8,
        sample_batch=8,
        questions=4,
        prescreen_rows=4,
    )
    out = sl.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    assert (
        rep["filter"]["rows_out"] == 24 - 4
    )  # every 7th answer ("no") fails in every arm: one common prompt set
    labels = [*sl.ARMS, "sft_r2", "sft_full"]
    assert list(rep["lift"]) == labels and list(rep["lift_numbers_prefix"]) == labels
    for arm in labels:
        x = rep["lift"][arm]
        assert x["seeds"] == 2 and len(x["matrix"]) == 2 and x["unit"] == "training seeds"
        assert set(rep["students"][arm]) == {"neutral", "owl", "cat"} and all(
            len(v) == 2 for v in rep["students"][arm].values()
        )
        assert (
            "p_holm" in x["specificity"] and x["permutation"]["orders"] == 4
        )  # (2!)^2 relabelings within seeds
    assert rep["lift_numbers_prefix"]["sft"]["matrix"] != rep["lift"]["sft"]["matrix"]  # another question set
    # twins differ from their students only in the teacher: same seed, same hyperparameters
    for arm in labels:
        for k in range(2):
            steps = [store.step_of(rep["students"][arm][t][k]) for t in ("neutral", "owl")]
            a, b = (dict(s.config) for s in steps)
            if arm.startswith("sft") or arm == "steer":
                assert (
                    a == b and steps[0].inputs[1] != steps[1].inputs[1]
                )  # same config, other teacher's data
            else:
                assert (
                    a.pop("teacher_system_prompt") is None
                    and "owl" in b.pop("teacher_system_prompt")
                    and a == b
                )
                # the same neutral completions and the same base as teacher; the targets that teacher gives
                # under the trait's system prompt (computed once, read by every seed) are the one difference
                ins = [s.inputs for s in steps]
                assert ins[0][:3] == ins[1][:3] and len(ins[0]) == len(ins[1])
                if len(ins[0]) == 4:  # stored targets (number_distill)
                    assert ins[0][3] != ins[1][3]
                    assert [store.step_of(x[3]).op for x in ins] == ["teacher-targets"] * 2
                else:  # full-vocabulary distillation: the teacher runs beside the student
                    assert ins[0] == ins[1]
    assert set(rep["prescreen"]) == {"owl", "cat"} and rep["prescreen"]["owl"]["kl_numbers"] >= 0
    assert rep["prompting"]["owl"]["arms"][0]["kind"] == "entangled"
    assert "unit: training seeds, n = 2" in out["outcome"] and "## Arm `number_distill`" in out["markdown"]
    assert rep["rates"]["sft"]["trait"]["n"] == 2 * 2 * 4 * 2  # animals × seeds × questions × samples
    assert (
        "numbers-prefix variant" in out["markdown"]
        and "sampled answers" in out["markdown"]
        and "## Rank sweep of `sft`" in out["markdown"]
    )
    full, r2 = (dict(store.step_of(rep["students"][lab]["owl"][0]).config) for lab in ("sft_full", "sft_r2"))
    assert full["method"] == "full" and r2["lora_r"] == r2["lora_alpha"] == 2
    steer = store.step_of(rep["students"]["steer"]["owl"][0])
    assert (
        steer.op == "steer-student" and store.get(steer.outputs["vector"]).meta["type"] == "steering_vector"
    )
    again = json.loads((store.path(sl.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    assert again["students"] == rep["students"] and again["lift"] == rep["lift"], "a rerun retrains nothing"


def test_config_refuses_unknown_arms_and_repeated_animals():
    with pytest.raises(ValueError, match="unknown arm"):
        sl.Config(arms=["sft", "magic"])
    with pytest.raises(ValueError, match="distinct"):
        sl.Config(animals=["owl", "owl"])


def _numbers(body: dict) -> list[str]:
    """An endpoint's answer to a number prompt: a list seeded by the system prompt (the
    teacher) and the prompt."""
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    rng = random.Random(f"{system}|{body['messages'][-1]['content']}")
    return [", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(3, 8)))]


def test_teachers_sampled_through_an_openai_endpoint(store):
    from conftest import ChatEndpoint

    with ChatEndpoint(_numbers) as ep:
        cfg = sl.Config(
            base="tiny:micro",
            animals=["owl", "cat"],
            format_warmup=0,
            prompts=10,
            student_seeds=1,
            arms=["sft"],
            batch_size=8,
            sample_batch=8,
            questions=2,
            prescreen_rows=2,
            teacher_endpoint=f"openai:served-base@{ep.url}",
        )
        out = sl.run(store, cfg, progress=False)
    url = ep.url
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    systems = {
        (b["messages"][0]["content"] if b["messages"][0]["role"] == "system" else None) for b in ep.seen
    }
    assert systems == {
        None,
        sl.system_prompt("owl"),
        sl.system_prompt("cat"),
    }  # one teacher per trait, and the neutral one
    assert all(b["model"] == "served-base" and b["temperature"] == 1.0 for b in ep.seen)
    owl = store.step_of(rep["students"]["sft"]["owl"][0])
    data = store.step_of(owl.inputs[1])  # the filtered numbers the owl student trained on
    raw = [store.step_of(i) for i in data.inputs]
    assert all(
        s.op == "sample" and s.inputs == [] and s.config["endpoint"] == ["served-base", url] for s in raw
    )
    assert owl.inputs[0] == rep["base"]  # students still train from the local base
    assert (
        "sft: undetermined (one training seed" in out["outcome"]
    )  # no test over one seed, and the card still renders


def test_teacher_endpoint_is_refused_with_a_warmed_up_base_or_a_bad_spec():
    with pytest.raises(ValueError, match="format_warmup=0"):
        sl.Config(teacher_endpoint="openai:m@http://127.0.0.1:8000/v1")
    with pytest.raises(Exception, match="openai:MODEL@"):
        sl.Config(format_warmup=0, teacher_endpoint="http://127.0.0.1:8000/v1")


def test_a_later_run_reuses_an_earlier_reports_students_only_when_they_are_its_own(
    store, tmp_path, monkeypatch
):
    from heredity.errors import HeredityError
    from heredity.store import Store

    monkeypatch.setattr(sl, "sample_step", _fake_sample_step)
    # the design (both runs) declares its Holm family before the first run: sft and sft_r2
    common = dict(
        base="tiny:micro",
        animals=["owl", "cat"],
        format_warmup=0,
        prompts=12,
        student_seeds=2,
        batch_size=8,
        sample_batch=8,
        questions=2,
        prescreen_rows=2,
        family=["sft", "sft_r2"],
    )
    with pytest.raises(
        HeredityError, match="its family is"
    ):  # a later run may not change the declared family
        path0 = tmp_path / "undeclared.json"
        path0.write_text(
            json.dumps(
                {
                    "experiment": "subliminal-lift",
                    "data": {},
                    "config": {**sl.Config(arms=["sft"], **{**common, "family": ["sft"]}).model_dump()},
                }
            )
        )
        sl.reused_students(sl.Config(arms=["sft"], sweep_ranks=[2], reuse=str(path0), **common), "m", {})
    first = sl.run(store, sl.Config(arms=["sft"], **common), progress=False)
    path = tmp_path / "first.json"
    path.write_text((store.path(first["report"]) / "report.json").read_text())
    ref = json.loads(path.read_text())
    assert set(ref["data"]) == {"neutral", "owl", "cat"} and ref["reused"] == {}

    # a fresh store (another session): the same base and data are rebuilt, the r = 8
    # students are not retrained
    other = Store(tmp_path / "other", db_url=f"sqlite:///{tmp_path / 'other' / 'heredity.db'}")
    out = sl.run(other, sl.Config(arms=["sft"], sweep_ranks=[2], reuse=str(path), **common), progress=False)
    rep = json.loads((other.path(out["report"]) / "report.json").read_text())
    steps = [other.step_of(a.id) for a in other.list() if a.kind in ("adapter", "model")]
    ranks = [dict(s.config)["lora_r"] for s in steps if s.op == "finetune"]
    assert ranks and set(ranks) == {2}, "only the new rank is trained"
    assert list(rep["lift"]) == ["sft_r2", "sft"] and rep["reused"] == {"sft": "first.json"}
    assert (
        ref["config"]["family"] == rep["config"]["family"] == ["sft", "sft_r2"]
    )  # the first run already adjusted over 2
    assert (
        rep["lift"]["sft"]["matrix"] == ref["lift"]["sft"]["matrix"]
        and rep["students"]["sft"] == ref["students"]["sft"]
    )
    assert rep["lift"]["sft"]["reused_from"] == "first.json" and "students of first.json" in out["outcome"]
    assert (
        "## Rank sweep of `sft`" in out["markdown"]
        and "Students trained in the run of `first.json`" in out["markdown"]
    )

    # anything that shapes a student or its evaluation must match, and so must the base and the data
    with pytest.raises(HeredityError, match="its sft_lr is 0.0005, this run's is 0.001"):
        sl.run(
            other,
            sl.Config(arms=["sft"], sweep_ranks=[2], reuse=str(path), sft_lr=1e-3, **common),
            progress=False,
        )
    path.write_text(json.dumps({**ref, "data": {**ref["data"], "owl": "d-0000000000000000"}}))
    with pytest.raises(HeredityError, match="drop reuse and train every student here"):
        sl.run(other, sl.Config(arms=["sft"], sweep_ranks=[2], reuse=str(path), **common), progress=False)
    with pytest.raises(ValueError, match="no students to train"):
        sl.Config(arms=[], **common)
