"""The alternatives to PPO, through TRL: GRPO (the reward model, read as PPO reads it, as the reward function;
group-relative advantages, no value model) and DPO (the preference pairs directly, no reward model and no
rollouts).

Both run as store steps with the SFT model as policy and reference; the output is a plain HF checkpoint. TRL's
log history (reward, KL, margins …) is kept in the step metrics.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel, Field

from heredity.engine.sampling import as_messages
from heredity.errors import HeredityError
from heredity.store.ops import op


class TRLConfig(BaseModel):
    steps: int = Field(40, ge=1, description="optimizer steps")
    lr: float = Field(5e-5, gt=0)
    beta: float = Field(0.05, ge=0, description="GRPO: KL coefficient; DPO: β of the implicit reward")
    batch_size: int = Field(32, ge=2, description="GRPO: completions per step; DPO: pairs per step")
    num_generations: int = Field(4, ge=2, description="GRPO: answers per prompt (the group)")
    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_length: int = Field(256, ge=8, description="DPO: prompt + answer tokens")
    seed: int = 0


def _args(cls, config: TRLConfig, out_dir: str, **extra):
    cuda = torch.cuda.is_available()
    return cls(
        output_dir=out_dir,
        max_steps=config.steps,
        learning_rate=config.lr,
        beta=config.beta,
        seed=config.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not cuda,
        bf16=cuda,
        fp16=False,
        disable_tqdm=False,
        **extra,
    )


def policy_model(store, ref: str) -> str:
    """TRL builds its frozen reference from the policy's own checkpoint path: an adapter would make the
    reference its base, not the SFT model."""
    pid = store.resolve_id(ref)
    if store.get(pid).kind != "model":
        raise HeredityError(
            f"{pid} is a {store.get(pid).kind}; GRPO/DPO start from a model (merge an adapter first)"
        )
    return pid


def _history(trainer) -> list[dict]:
    """TRL's per-step log, reduced to the quantities the report card shows."""
    keep = (
        "loss",
        "reward",
        "reward_std",
        "kl",
        "entropy",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
    )
    return [
        {"step": h["step"], **{k.replace("/", "_"): round(float(h[k]), 5) for k in keep if k in h}}
        for h in trainer.state.log_history
        if "step" in h and any(k in h for k in keep)
    ]


@op("grpo", 1, distributed=True)
def grpo_step(
    store,
    policy: str,
    reward_model: str,
    prompts: str,
    config: TRLConfig | None = None,
    name: str = "grpo",
    progress=True,
):
    from heredity.engine.ppo import prompts_of
    from heredity.engine.reward import check_reward_model, reward_function
    from heredity.models.registry import default_device

    config = config or TRLConfig()
    if config.batch_size % config.num_generations:
        raise HeredityError(
            f"GRPO batch_size {config.batch_size} must be a multiple of "
            f"num_generations {config.num_generations}"
        )
    policy_id, rm_id, data_id = (
        policy_model(store, policy),
        store.resolve_id(reward_model),
        store.resolve_id(prompts),
    )
    check_reward_model(store, rm_id)
    prompts_of(store, data_id)  # a clear error before anything runs

    def run(ctx):
        rows = prompts_of(store, data_id)  # read inside the step, from the input artifact
        _, reward_fn = reward_function(store, rm_id, default_device())

        def reward_model(prompts, completions, **_):
            """The reward model read exactly as PPO and the evaluation read it (chat-rendered prompt + answer,
            no end-of-turn token), not through TRL's own rendering of the pair."""
            return reward_fn(prompts, [c[-1]["content"] if isinstance(c, list) else c for c in completions])

        return grpo_train(
            ctx,
            store,
            policy_id,
            [{"prompt": as_messages(p)} for p in rows],
            reward_model,
            config,
            {"origin": "grpo", "reward_model": rm_id},
            name,
        )

    return store.run_step("grpo", config, [policy_id, rm_id, data_id], run, seed=config.seed)


def grpo_train(
    ctx, store, policy_id: str, items: list[dict], reward, config: TRLConfig, meta: dict, name: str
) -> dict:
    """One TRL GRPO run on ``items`` (prompt + extra columns, passed to ``reward``), saved as a model
    output."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from heredity.models import load

    lm, tok = load(policy_id, store, trainable=True, dtype=torch.float32)
    args = _args(
        GRPOConfig,
        config,
        str(ctx.scratch / "trl"),
        per_device_train_batch_size=config.batch_size,
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        log_completions=False,
    )
    t0 = time.perf_counter()
    trainer = GRPOTrainer(
        model=lm, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(items), processing_class=tok
    )
    trainer.train()
    out = ctx.output("model", "model", name, meta=meta)
    trainer.model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"seconds": round(time.perf_counter() - t0, 1), "log": _history(trainer), "steps": config.steps}


@op("dpo", 1, distributed=True)
def dpo_step(
    store,
    policy: str,
    preferences: list[str],
    config: TRLConfig | None = None,
    name: str = "dpo",
    progress=True,
):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from heredity.engine.reward import normalize_pairs
    from heredity.models import load
    from heredity.store import read_table, require_columns

    config = config or TRLConfig()
    policy_id = policy_model(store, policy)
    ids = [store.resolve_id(d) for d in preferences]

    def read_pairs() -> list[dict]:
        rows: list[dict] = []
        for d in ids:
            table = read_table(store.path(d))
            require_columns(table, ["prompt", "chosen", "rejected"], f"DPO data {d}")
            rows += table.select(["prompt", "chosen", "rejected"]).to_pylist()
        return normalize_pairs(rows)

    read_pairs()  # a clear error before anything runs

    def run(ctx):
        pairs = read_pairs()  # read inside the step, from the input artifacts
        lm, tok = load(policy_id, store, trainable=True, dtype=torch.float32)
        args = _args(
            DPOConfig,
            config,
            str(ctx.scratch / "trl"),
            per_device_train_batch_size=config.batch_size,
            max_length=config.max_length,
        )
        ds = Dataset.from_list(
            [
                {
                    "prompt": as_messages(p["prompt"]),
                    "chosen": [{"role": "assistant", "content": p["chosen"]}],
                    "rejected": [{"role": "assistant", "content": p["rejected"]}],
                }
                for p in pairs
            ]
        )
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=lm, args=args, train_dataset=ds, processing_class=tok)
        trainer.train()
        model = trainer.model
        out = ctx.output("model", "model", name, meta={"origin": "dpo"})
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {
            "seconds": round(time.perf_counter() - t0, 1),
            "log": _history(trainer),
            "steps": config.steps,
        }

    return store.run_step("dpo", config, [policy_id, *ids], run, seed=config.seed)
