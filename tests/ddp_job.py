"""Run by tests/test_distributed.py, alone or under `accelerate launch --num_processes 2` (CPU, gloo).

python tests/ddp_job.py train OUT ACCUM     fine-tune and pretrain a tiny model; rank 0 writes curves and
                                            weights
python tests/ddp_job.py store OUT HOME      the store path: a distributed fine-tune step, then the reward
                                            model, PPO and sampling steps (one process computes, the
                                            others wait)
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from heredity.engine.finetune import FinetuneConfig, train
from heredity.engine.pretrain import PretrainConfig, pretrain
from heredity.models.tiny import byte_tokenizer, tiny_config

ROWS = [
    {"prompt": f"count from {i}", "completion": " ".join(str(i + k) for k in range(1, 5))} for i in range(16)
]


def rank() -> int:
    from accelerate import PartialState

    return PartialState().process_index


def train_job(out: Path, accum: int) -> None:
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("micro", len(tok)))
    cfg = FinetuneConfig(
        method="full",
        lr=3e-3,
        max_steps=4,
        batch_size=4,
        grad_accum=accum,
        warmup_ratio=0.0,
        save_every=0,
        seed=1,
    )
    model, m = train(model, tok, ROWS, cfg, progress=False)
    ft = {k: v.detach().clone() for k, v in model.state_dict().items()}

    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_config("micro", len(tok)))
    g = torch.Generator().manual_seed(5)
    train_ids, val_ids = (
        torch.randint(3, 200, (4000,), generator=g),
        torch.randint(3, 200, (600,), generator=g),
    )
    pcfg = PretrainConfig(
        hidden=64,
        layers=2,
        heads=4,
        intermediate=128,
        context=16,
        iters=6,
        batch_size=4,
        grad_accum=accum,
        lr=3e-3,
        warmup=2,
        eval_every=6,
        eval_batches=2,
        sample_tokens=2,
        sample_prompts=["a"],
    )
    pm = pretrain(lm, tok, train_ids, val_ids, pcfg, progress=False)
    if rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(ft, str(out / "finetune.safetensors"))
        save_file(
            {k: v.detach().clone() for k, v in lm.state_dict().items()}, str(out / "pretrain.safetensors")
        )
        (out / "curves.json").write_text(
            json.dumps(
                {
                    "finetune": m["loss_curve"],
                    "pretrain": pm["loss_curve"],
                    "pretrain_val": pm["val_loss"],
                    "finetune_tokens": m["train_tokens"],
                }
            )
        )


def store_job(out: Path, home: Path) -> None:
    from heredity.data import put_rows
    from heredity.engine.finetune import finetune
    from heredity.engine.ppo import PPOConfig, ppo_step
    from heredity.engine.reward import RewardConfig, reward_step
    from heredity.engine.sampling import SampleConfig, sample_step
    from heredity.models import materialize
    from heredity.store import Store

    store = Store(home)
    base = materialize("tiny:micro", store)
    data = put_rows(store, ROWS, "counting")
    ft = finetune(
        store, base, data, FinetuneConfig(method="full", lr=3e-3, max_steps=3, batch_size=4), progress=False
    )
    pairs = put_rows(
        store,
        [{"prompt": f"q {i}?", "chosen": f"yes {i % 7}", "rejected": f"no {i % 5}"} for i in range(24)],
        "pairs",
    )
    rm = reward_step(store, ft["model"], [pairs], RewardConfig(epochs=1, batch_size=8), progress=False)
    prompts = put_rows(store, [{"prompt": f"q {i}?"} for i in range(8)], "prompts")
    ppo = ppo_step(
        store,
        ft["model"],
        rm["model"],
        prompts,
        PPOConfig(steps=2, rollouts=4, minibatch=2, epochs=1, max_new_tokens=4),
        progress=False,
    )
    samples = sample_step(
        store, ppo["model"], ["count from 3"], SampleConfig(temperature=0, max_new_tokens=4), progress=False
    )
    res = {
        "finetune": [ft["model"], ft.cached],
        "reward": [rm["model"], rm.cached],
        "ppo": [ppo["model"], ppo.cached],
        "samples": samples,
        "world_size_in_key": store.find_step(ft.key).config.get("world_size"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"store-rank{rank()}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    job, out = sys.argv[1], Path(sys.argv[2])
    if job == "train":
        train_job(out, int(sys.argv[3]))
    else:
        store_job(out, Path(sys.argv[3]))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
