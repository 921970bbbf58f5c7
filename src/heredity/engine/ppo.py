"""PPO for language models (Ouyang et al. 2022; Ziegler et al. 2019), written out: TRL 1.x no longer ships it.

One iteration:
1. **Rollouts**: the policy answers a batch of prompts (sampling at ``temperature``; EOS is part of the
   answer).
2. **Scores**: a reward function scores each (prompt, answer) — a reward model, or any Python function.
3. **Per-token rewards**: r_t = −β·KL_t (KL_t = log π(a_t|s_t) − log π_ref(a_t|s_t), the frozen SFT
   reference), plus the score on the answer's last token.
4. **GAE**: δ_t = r_t + γ·V(s_{t+1}) − V(s_t); A_t = Σ_k (γλ)^k δ_{t+k}; returns R_t = A_t + V(s_t);
   advantages whitened over the batch.
5. **Updates**: ``epochs`` passes over minibatches of the rollouts with the clipped surrogate
   −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = π/π_old, an optional entropy bonus, and a clipped value loss on a
   separate value model (initialized from the reward model, as in InstructGPT).

Logged per iteration: score, KL, non-score reward, entropy, clip fraction, approximate KL, value loss, answer
length. The pieces (``gae``, ``policy_loss``, ``value_loss``, ``kl_per_token``, ``token_rewards``,
``masked_whiten``) are plain functions over tensors, tested against hand computations.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from heredity.errors import HeredityError
from heredity.store.ops import op

RewardFn = Callable[[list, list[str]], Sequence[float]]


class PPOConfig(BaseModel):
    steps: int = Field(40, ge=1, description="PPO iterations (rollout batches)")
    rollouts: int = Field(32, ge=2, description="prompts per iteration, one answer each")
    minibatch: int = Field(8, ge=1)
    epochs: int = Field(4, ge=1, description="passes over each rollout batch")
    lr: float = Field(5e-5, gt=0)
    kl_coef: float = Field(0.05, ge=0, description="β of the per-token KL penalty to the reference")
    kl_estimator: str = Field(
        "k1", pattern="^(k1|k3)$", description="k1 = log π − log π_ref; k3 = the non-negative estimator"
    )
    clip: float = Field(0.2, gt=0, description="ε of the clipped surrogate")
    vf_clip: float = Field(0.2, gt=0)
    entropy_coef: float = Field(0.0, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    whiten_advantages: bool = True
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(16, ge=1)
    missing_eos_penalty: float | None = Field(
        1.0, description="subtracted from the score of an answer cut at max_new_tokens"
    )
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0


# ---- the pieces ----------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the unmasked entries (population variance); masked entries become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate for tokens sampled from the policy: k1 = log π − log π_ref (unbiased, can be
    negative per token); k3 = (ρ − 1) − log ρ with ρ = π_ref/π (unbiased, never negative)."""
    d = logp - ref_logp
    if estimator == "k1":
        return d
    return torch.expm1(-d) + d


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = −β·KL_t on every answer token, plus the sequence's score on its last token."""
    r = -kl_coef * kl * mask
    last = mask.sum(1).long() - 1
    r[torch.arange(len(scores)), last] += scores
    return r


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation over right-padded answers; V after the last token is 0.

    Returns (advantages, returns = advantages + values), both 0 on padding."""
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
):
    """The clipped surrogate (to minimize): mean of max(−ρA, −clip(ρ, 1−ε, 1+ε)A); with clip fraction and
    the approximate KL ½·(log ρ)² between the updated and the rollout policy."""
    log_ratio = (logp - old_logp) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(pg1, pg2), mask)
    clipfrac = masked_mean((pg2 > pg1).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approx_kl


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
):
    """½·mean of max((V − R)², (V_clipped − R)²), V_clipped = V_old + clip(V − V_old, −ε, ε); and the clip
    fraction."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    l1, l2 = (values - returns) ** 2, (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(l1, l2), mask), masked_mean((l2 > l1).float(), mask)


# ---- the model -----------------------------------------------------------------------------------


class ValueModel(torch.nn.Module):
    """V(s_t) at every position: a transformer trunk and a scalar head. Initialized from the reward model (as
    in InstructGPT) when there is one, else from a copy of the policy's trunk with a zero head. A separate
    model, so the value loss never pulls on the policy's weights."""

    def __init__(self, trunk, head):
        super().__init__()
        self.trunk, self.head = trunk, head

    @classmethod
    def from_reward_model(cls, rm) -> ValueModel:
        return cls(copy.deepcopy(rm.base_model), copy.deepcopy(rm.score))

    @classmethod
    def from_policy(cls, lm) -> ValueModel:
        head = torch.nn.Linear(lm.config.get_text_config().hidden_size, 1, bias=False)
        torch.nn.init.zeros_(head.weight)
        p = next(lm.parameters())
        return cls(copy.deepcopy(lm.base_model), head.to(device=p.device, dtype=p.dtype))

    def forward(self, input_ids, attention_mask, position_ids):
        h = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(h).squeeze(-1).float()


def build_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad: int, device):
    """Left-padded prompts then right-padded answers: every answer starts at column P (the longest prompt)."""
    P, R = max(map(len, prompt_ids)), max(map(len, response_ids))
    B = len(prompt_ids)
    ids = torch.full((B, P + R), pad, dtype=torch.long)
    att = torch.zeros((B, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        ids[i, P - len(p) : P] = torch.tensor(p)
        ids[i, P : P + len(r)] = torch.tensor(r)
        att[i, P - len(p) : P + len(r)] = 1
    pos = (att.cumsum(1) - 1).clamp(min=0)
    mask = att[:, P:].float()
    return ids.to(device), att.to(device), pos.to(device), mask.to(device), P


def answer_logprobs(logits: torch.Tensor, ids: torch.Tensor, P: int, temperature: float):
    """log π(a_t | s_t) of the answer tokens (columns P..) and the logits that predicted them."""
    lg = logits[:, P - 1 : -1].float() / temperature
    logp = torch.log_softmax(lg, dim=-1).gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1)
    return logp, lg


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits, dim=-1)
    return -(lp.exp() * lp).sum(-1)


# ---- the loop ------------------------------------------------------------------------------------


def ppo_train(
    policy_lm,
    ref_lm,
    tokenizer,
    prompts: Sequence,
    reward_fn: RewardFn,
    config: PPOConfig,
    progress=True,
    value_model: ValueModel | None = None,
):
    """Optimize ``policy_lm`` in place against ``reward_fn``; returns (policy_lm, metrics with per-step logs).

    ``value_model``: the critic (default: a copy of the policy's trunk with a zero head). Keep the trained
    models' weights in fp32: on CUDA the forwards run under bf16 autocast (bf16 weights would round most
    small updates away). Dropout stays off (eval mode throughout), so the rollout and update forwards
    agree."""
    from heredity.engine.sampling import SampleConfig, pad_id, render_prompt, sample

    if len(prompts) < 1:
        raise HeredityError("PPO needs prompts")
    torch.manual_seed(config.seed)
    device = next(policy_lm.parameters()).device
    critic = value_model if value_model is not None else ValueModel.from_policy(policy_lm)
    critic.to(device)
    policy_lm.eval()
    critic.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    ref_lm.eval()
    for p in ref_lm.parameters():
        p.requires_grad_(False)
    for p in [*policy_lm.parameters(), *critic.parameters()]:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(policy_lm.parameters(), lr=config.lr, eps=1e-5)
    v_opt = torch.optim.AdamW(critic.parameters(), lr=config.lr, eps=1e-5)
    pad = pad_id(tokenizer, policy_lm)
    render = SampleConfig(chat=True)
    rng = random.Random(config.seed)
    order: list[int] = []
    logs, t0 = [], time.perf_counter()
    bar = tqdm(total=config.steps, desc="ppo", disable=not progress)
    for step in range(config.steps):
        while len(order) < config.rollouts:
            more = list(range(len(prompts)))
            rng.shuffle(more)
            order += more
        idx, order = order[: config.rollouts], order[config.rollouts :]
        batch_prompts = [prompts[i] for i in idx]
        # 1. rollouts
        comps = sample(
            policy_lm,
            tokenizer,
            batch_prompts,
            SampleConfig(
                temperature=config.temperature,
                top_p=1.0,
                max_new_tokens=config.max_new_tokens,
                seed=config.seed * 100_003 + step,
            ),
            progress=False,
        )
        responses = [
            c.token_ids + ([c.eos_id] if c.eos_id is not None else []) for c in comps
        ]  # the EOS drawn is an action too
        texts = [c.text for c in comps]
        # 2. scores
        scores = torch.tensor([float(s) for s in reward_fn(batch_prompts, texts)], device=device)
        raw_scores = scores.clone()
        ended = torch.tensor([c.finish_reason == "stop" for c in comps], device=device)
        if config.missing_eos_penalty is not None:
            scores = torch.where(ended, scores, scores - config.missing_eos_penalty)
        prompt_ids = [
            tokenizer(render_prompt(tokenizer, p, render), add_special_tokens=False)["input_ids"]
            for p in batch_prompts
        ]
        ids, att, pos, mask, P = build_batch(prompt_ids, responses, pad, device)
        # 3. old log-probs, reference log-probs, values; per-token rewards
        with torch.no_grad(), autocast:
            logits = policy_lm(input_ids=ids, attention_mask=att, position_ids=pos).logits
            old_logp, _ = answer_logprobs(logits, ids, P, config.temperature)
            old_values = critic(ids, att, pos)[:, P - 1 : -1] * mask
            ref_logits = ref_lm(input_ids=ids, attention_mask=att, position_ids=pos).logits
            ref_logp, _ = answer_logprobs(ref_logits, ids, P, config.temperature)
            kl = kl_per_token(old_logp, ref_logp, config.kl_estimator) * mask
            rewards = token_rewards(scores, kl, mask, config.kl_coef)
            # 4. advantages
            adv, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                adv = masked_whiten(adv, mask)
        # 5. updates
        stats: dict[str, list[float]] = {
            "pg_loss": [],
            "vf_loss": [],
            "clipfrac": [],
            "vf_clipfrac": [],
            "approx_kl": [],
            "entropy": [],
        }
        for _ in range(config.epochs):
            perm = torch.randperm(len(idx)).tolist()
            for s in range(0, len(perm), config.minibatch):
                mb = perm[s : s + config.minibatch]
                m = mask[mb]
                with autocast:
                    logits = policy_lm(input_ids=ids[mb], attention_mask=att[mb], position_ids=pos[mb]).logits
                    v = critic(ids[mb], att[mb], pos[mb])[:, P - 1 : -1]
                logp, lg = answer_logprobs(logits, ids[mb], P, config.temperature)
                pg, clipfrac, approx_kl = policy_loss(logp, old_logp[mb], adv[mb], m, config.clip)
                vf, vf_clipfrac = value_loss(v, old_values[mb], returns[mb], m, config.vf_clip)
                with torch.set_grad_enabled(
                    config.entropy_coef > 0
                ):  # the full-vocabulary entropy costs memory
                    ent = masked_mean(entropy_of(lg), m)
                opt.zero_grad(set_to_none=True)
                v_opt.zero_grad(set_to_none=True)
                (
                    pg - config.entropy_coef * ent + vf
                ).backward()  # two models, no shared weights: one backward, two optimizers
                torch.nn.utils.clip_grad_norm_(policy_lm.parameters(), config.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(critic.parameters(), config.max_grad_norm)
                opt.step()
                v_opt.step()
                for k, val in (
                    ("pg_loss", pg),
                    ("vf_loss", vf),
                    ("clipfrac", clipfrac),
                    ("vf_clipfrac", vf_clipfrac),
                    ("approx_kl", approx_kl),
                    ("entropy", ent),
                ):
                    stats[k].append(float(val.detach()))
        seq_kl = kl.sum(1)
        log = {
            "step": step + 1,
            "score": round(float(raw_scores.mean()), 4),
            "kl": round(float(seq_kl.mean()), 4),
            "non_score_reward": round(float((-config.kl_coef * kl).sum(1).mean()), 4),
            "reward": round(float(rewards.sum(1).mean()), 4),
            "answer_tokens": round(float(mask.sum(1).mean()), 2),
            "ended": round(float(ended.float().mean()), 3),
            **{k: round(sum(v) / len(v), 5) for k, v in stats.items()},
        }
        logs.append(log)
        bar.update(1)
        bar.set_postfix(score=f"{log['score']:.3f}", kl=f"{log['kl']:.3f}", clip=f"{log['clipfrac']:.2f}")
        if not math.isfinite(log["pg_loss"]):
            raise HeredityError(
                f"PPO diverged at iteration {step + 1} (loss is not finite); lower lr or raise kl_coef"
            )
    bar.close()
    first = logs[: max(1, len(logs) // 5)]
    last = logs[-max(1, len(logs) // 5) :]
    return policy_lm, {
        "steps": config.steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "log": logs,
        "score_first": round(sum(x["score"] for x in first) / len(first), 4),
        "score_last": round(sum(x["score"] for x in last) / len(last), 4),
        "kl_last": round(sum(x["kl"] for x in last) / len(last), 4),
    }


# ---- as a store step -----------------------------------------------------------------------------


def prompts_of(store, dataset: str) -> list:
    """The ``prompt`` column of a stored dataset (text or chat messages)."""
    from heredity.store import read_table, require_columns

    table = read_table(store.path(store.resolve_id(dataset)))
    require_columns(table, ["prompt"], "RL prompts")
    return table.column("prompt").to_pylist()


@op(
    "ppo",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
)
def ppo_step(
    store,
    policy: str,
    reward_model: str,
    prompts: str,
    config: PPOConfig | None = None,
    name: str = "ppo",
    progress=True,
):
    """PPO from ``policy`` (the SFT model, also the frozen reference) against a stored reward model, on the
    prompts of a stored dataset. Returns the StepResult (output role "model"; metrics hold the per-step
    log)."""
    from heredity.engine.reward import check_reward_model, reward_function
    from heredity.models import load

    config = config or PPOConfig()
    policy_id, rm_id, data_id = (
        store.resolve_id(policy),
        store.resolve_id(reward_model),
        store.resolve_id(prompts),
    )
    prompts_of(store, data_id)  # a clear error before anything runs

    def run(ctx):
        rows = prompts_of(store, data_id)  # read inside the step, from the input artifact
        lm, tok = load(policy_id, store, merge_adapter=True, trainable=True, dtype=torch.float32)
        ref, _ = load(policy_id, store, merge_adapter=True)
        rm, reward_fn = reward_function(store, rm_id, next(lm.parameters()).device)
        lm, metrics = ppo_train(
            lm,
            ref,
            tok,
            rows,
            reward_fn,
            config,
            progress=progress,
            value_model=ValueModel.from_reward_model(rm),
        )
        out = ctx.output("model", "model", name, meta={"origin": "ppo", "reward_model": rm_id})
        lm.save_pretrained(out)
        tok.save_pretrained(out)
        return metrics

    check_reward_model(store, rm_id)
    return store.run_step("ppo", config, [policy_id, rm_id, data_id], run, seed=config.seed)
