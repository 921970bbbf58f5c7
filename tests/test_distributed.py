"""`accelerate launch --num_processes 2` on CPU (gloo), for real: a 2-process data-parallel fine-tune and
pretraining equal a 1-process run with the same global batch, and the store under a launch
computes every step once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from safetensors.torch import load_file

JOB = Path(__file__).with_name("ddp_job.py")


def _env() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HEREDITY_DB_URL", "WORLD_SIZE", "RANK", "LOCAL_RANK")
    }
    env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", HEREDITY_CHECK_KEYS="1")
    return env


def _launch(*args: str) -> None:
    """The documented CPU launch: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
    --num_processes 2 (gloo)."""
    exe = Path(sys.executable).parent / "accelerate"
    r = subprocess.run(
        [
            str(exe),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(JOB),
            *args,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    r = subprocess.run(
        [sys.executable, str(JOB), "train", str(root / "one"), "2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    _launch("train", str(root / "two"), "1")
    return root


@pytest.mark.parametrize("what", ["finetune", "pretrain"])
def test_two_processes_equal_one_with_the_same_global_batch(runs, what):
    """1 process × batch 4 × grad_accum 2 = 2 processes × batch 4: the same batches per optimizer step, the
    same LR schedule (it used to end twice too early under DDP), so the same loss curve and final weights
    (tolerance: 1e-5 absolute; gloo's all-reduce sums in another order than accumulation)."""
    one, two = (json.loads((runs / d / "curves.json").read_text()) for d in ("one", "two"))
    assert [s for s, _ in one[what]] == [s for s, _ in two[what]]
    assert [v for _, v in two[what]] == pytest.approx([v for _, v in one[what]], abs=1e-4)
    if what == "finetune":
        assert one["finetune_tokens"] == two["finetune_tokens"], "tokens are counted over both processes"
    a, b = (load_file(str(runs / d / f"{what}.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, f"{what}: weights differ by {worst}"


def test_store_under_accelerate_launch(tmp_path):
    """Every rank trains the distributed fine-tune and gets rank 0's complete output; the reward model, PPO
    and sampling are computed by one rank while the other waits and reuses it — never twice, never racing."""
    home = tmp_path / "home"
    _launch("store", str(tmp_path), str(home))
    r0, r1 = (json.loads((tmp_path / f"store-rank{i}.json").read_text()) for i in (0, 1))
    for k in ("finetune", "reward", "ppo", "samples"):
        assert (r0[k][0] if k != "samples" else r0[k]) == (r1[k][0] if k != "samples" else r1[k]), k
    assert r0["finetune"][1] is False and r1["finetune"][1] is False, (
        "both ranks trained the data-parallel step"
    )
    for k in (
        "reward",
        "ppo",
    ):  # in a process group, rank 0 computes (transformers writes weights on rank 0 only)
        assert (r0[k][1], r1[k][1]) == (False, True), f"{k}: rank 0 computes it, rank 1 reuses it"
    assert r0["world_size_in_key"] == 2, "the world size (global batch) is part of a distributed step's key"
    from heredity.store import Store

    store = Store(home)
    model = store.get(r0["finetune"][0])
    assert (model.path / "config.json").is_file() and any(model.path.glob("*.safetensors"))
    assert store.fsck()["broken"] == {}
    assert {a.name for a in store.list()} >= {"counting", "pairs", "prompts"}
    assert len([a for a in store.list() if a.kind == "model"]) == 4, (
        "base, fine-tune, reward model, PPO: once each"
    )
