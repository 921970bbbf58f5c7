"""The ChatGPT recipe end to end: tokenizer, pretraining, SFT, reward model, PPO (or GRPO / DPO), report card.

Methods, as a paper's section would list them:
1. Tokenizer: a byte-level BPE trained on the corpus' training documents (CPython's documentation,
   ``pydoc_data.topics``, by default; any text/JSONL/parquet files by config).
2. Pretraining: a Llama-architecture model from scratch on the training documents; validation loss and
   perplexity on held-out documents; samples at every evaluation. Skipped when ``base`` names a model.
3. SFT: completion-only loss on built-in templated instructions with exactly graded answers (and/or the lab
   server's feedback SFT export or user JSONL); accuracy on held-out instructions (greedy decoding).
4. Reward model: a scalar head on the SFT model, Bradley–Terry loss on preference pairs — built-in pairs come
   from a synthetic rule (correct and concise > correct but wordy > wrong) over the SFT model's own samples,
   clearly labelled synthetic; the lab server's preference export or user JSONL can replace or join them.
   Pairwise accuracy on pairs of held-out prompts. The synthetic pairs are split by prompt
   (``judge_fraction``): the *training RM* (the one PPO/GRPO optimizes; DPO trains on its pairs) learns from
   one part, a *judge RM* from the other — same recipe, disjoint prompts, never seen by the policy.
5. RL: PPO (heredity's own: per-token KL to the frozen SFT model, value head, GAE, clipped surrogate), or
   GRPO / DPO through TRL (``rl``).
6. Report card, headline first: exact-match accuracy on held-out instructions (Wilson intervals; SFT → RL by
   an exact McNemar test over the same items). Then the RL model's win share over the SFT model on held-out
   prompts judged by the training RM (circular: the policy optimized it) and by the judge RM; pretraining
   perplexity, RM accuracies, reward and KL over RL steps, samples. One trained model per stage (one training
   seed): the intervals and p-values are over held-out items, about these models, not about the recipe.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, Field

from heredity.data import put_rows
from heredity.data.corpus import make_corpus
from heredity.data.instructions import INSTRUCTIONS, instruction_rows, synthetic_preferences
from heredity.data.io import rows_digest
from heredity.data.tasks import grade
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample
from heredity.engine.ppo import PPOConfig, ppo_step
from heredity.engine.pretrain import PretrainConfig, pretrain_step, train_tokenizer_step
from heredity.engine.reward import RewardConfig, reward_function, reward_step, split_pairs
from heredity.engine.sampling import as_messages
from heredity.engine.trl_rl import TRLConfig, dpo_step, grpo_step
from heredity.errors import HeredityError
from heredity.experiments import experiment
from heredity.experiments.chatgpt_render import TRAINING_RM, markdown, plot
from heredity.models import load, materialize, merge_adapter
from heredity.reports.card import save_card
from heredity.reports.stats import fmt_ci, fmt_test, mean_ci, paired_rate_test, rate_ci, rates_ci, verdict
from heredity.store import Store, read_table, write_table
from heredity.store.ops import op, rows_op

rows_op("make-sft-data")  # rows made here, stored by data.io.put_rows

EVAL_BATCH = 64  # prompts decoded together in the held-out evaluation (keyed through the sampling config)
PREFERENCE_BATCH = 16  # sequences decoded together when sampling answers for the synthetic pairs
UNIT = "held-out instructions, one trained model per stage"
NANOGPT = {
    "setting": "nanoGPT shakespeare-char on CPU: 4 layers, 4 heads, 128 wide, context 64, batch 12, "
    "2000 iterations",
    "val_loss_nats_per_char": 1.88,
    "minutes": 3,
}


class Config(BaseModel):
    base: str | None = Field(
        None, description="start from this model and skip pretraining (e.g. smollm2-135m-instruct)"
    )
    corpus: list[str] = Field(
        default_factory=list, description="pretraining text/JSONL/parquet files; empty = pydoc_data.topics"
    )
    val_fraction: float = Field(0.1, gt=0, lt=1)
    vocab_size: int = Field(2048, ge=300)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    instructions: list[str] = Field(default_factory=lambda: list(INSTRUCTIONS))
    builtin_sft: bool = Field(True, description="include the built-in templated instructions in SFT")
    sft_rows_per_task: int = Field(1500, ge=1)
    eval_rows_per_task: int = Field(100, ge=4)
    sft_data: list[str] = Field(
        default_factory=list,
        description="more SFT data: dataset ids or JSONL/parquet (prompt/completion or messages)",
    )
    sft: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(
            method="full", lr=1e-3, epochs=2, batch_size=32, max_length=128, warmup_ratio=0.05
        )
    )
    synthetic_preferences: bool = Field(True, description="add pairs ranked by the built-in synthetic rule")
    preference_prompts_per_task: int = Field(300, ge=1)
    preference_samples: int = Field(2, ge=1, description="SFT samples per prompt ranked by the rule")
    preference_data: list[str] = Field(
        default_factory=list, description="more pairs: dataset ids or JSONL/parquet (prompt/chosen/rejected)"
    )
    judge_fraction: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="share of the synthetic preference prompts set aside (by prompt) "
        "to train a judge RM the policy never trains against; the training RM and DPO get the rest; "
        "0 = no judge",
    )
    reward: RewardConfig = Field(default_factory=lambda: RewardConfig(epochs=2, lr=2e-4, batch_size=32))
    rl: Literal["ppo", "grpo", "dpo"] = "ppo"
    rl_prompts_per_task: int = Field(300, ge=1)
    ppo: PPOConfig = Field(default_factory=lambda: PPOConfig(steps=100, lr=2e-5, kl_coef=0.1))
    trl: TRLConfig = Field(default_factory=lambda: TRLConfig(steps=100, lr=2e-5, beta=0.1))
    max_new_tokens: int = Field(16, ge=1)
    samples_shown: int = Field(12, ge=0)
    seed: int = 0

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "smollm2": cls(
                base="smollm2-135m-instruct",
                sft_rows_per_task=150,
                eval_rows_per_task=40,
                sft=FinetuneConfig(
                    method="lora", lr=1e-3, epochs=1, batch_size=16, lora_r=16, lora_alpha=32, max_length=128
                ),
                preference_prompts_per_task=40,
                reward=RewardConfig(epochs=1, lr=2e-5, batch_size=8),
                rl_prompts_per_task=40,
                ppo=PPOConfig(steps=20, rollouts=16, minibatch=8, epochs=2, lr=1e-5, kl_coef=0.05),
                trl=TRLConfig(steps=20, lr=1e-5, batch_size=16),
            ),
            "paper": cls(
                vocab_size=8192,
                pretrain=PretrainConfig(
                    hidden=512,
                    layers=8,
                    heads=8,
                    intermediate=1408,
                    context=256,
                    max_positions=512,
                    iters=5000,
                    batch_size=64,
                    lr=6e-4,
                    min_lr=6e-5,
                    warmup=200,
                    eval_every=500,
                    eval_batches=50,
                ),
                sft_rows_per_task=3000,
                eval_rows_per_task=200,
                preference_prompts_per_task=500,
                sft=FinetuneConfig(method="full", lr=3e-4, epochs=3, batch_size=64, max_length=128),
                rl_prompts_per_task=500,
                ppo=PPOConfig(steps=200, rollouts=64, minibatch=16, lr=1e-5),
                trl=TRLConfig(steps=200, batch_size=64),
            ),
        }


# ---- the recipe ----------------------------------------------------------------------------------


@op(
    "make-synthetic-preferences",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
)
@op(
    "split-preferences",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
)
@experiment("chatgpt", question="The ChatGPT recipe from a BPE tokenizer to PPO: what does each stage add?")
def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    lineage: dict[str, str] = {}  # what each stage made, in recipe order
    steps: dict[str, dict] = {}  # each stage's training metrics
    # 1-2. tokenizer and pretraining (or a given base)
    base = _base_model(store, config, lineage, steps, progress)
    # 3. SFT, and the held-out instructions every stage is evaluated on
    sft_model, eval_id, eval_rows = _sft(store, config, base, lineage, steps, progress)
    # 4. preference pairs, the training reward model and the judge
    pref_ids, judge_pairs = _preference_data(store, config, sft_model, progress)
    rm_id, judge_id = _reward_models(
        store, config, sft_model, pref_ids, judge_pairs, lineage, steps, progress
    )
    # 5. RL
    rl_model = _rl(store, config, sft_model, rm_id, pref_ids, lineage, steps, progress)
    # 6. evaluation: every stage's greedy answers to the held-out instructions, scored by both RMs
    evals = {
        "pretrained (no SFT)" if config.base is None else f"{config.base} (no SFT)": base,
        "SFT": sft_model,
        config.rl.upper(): rl_model,
    }
    results = _evaluate(store, config, evals, eval_id, rm_id, judge_id, progress)
    report = build_report(config, steps, results, eval_rows, lineage)
    report["seconds"] = round(time.perf_counter() - t0, 1)

    card = save_card(
        store,
        "chatgpt",
        report,
        list(evals.values()) + [rm_id] + ([judge_id] if judge_id else []),
        markdown,
        plot,
    )
    return {**card, "lineage_of": rl_model}


# ---- the stages ----------------------------------------------------------------------------------


def _base_model(store: Store, config: Config, lineage: dict, steps: dict, progress: bool) -> str:
    """1-2. A BPE tokenizer and a model pretrained from scratch on the corpus, or ``config.base`` as is."""
    if config.base is None:
        corpus = make_corpus(store, config.corpus or None, config.val_fraction, config.seed)
        tok_id = train_tokenizer_step(store, corpus, config.vocab_size, progress=progress)
        pre = pretrain_step(store, corpus, tok_id, config.pretrain, progress=progress)
        base = pre["model"]
        lineage.update(corpus=corpus, tokenizer=tok_id, pretrained=base)
        steps["tokenizer"] = store.step_of(tok_id).metrics
        steps["pretrain"] = pre.metrics
    else:
        base = materialize(config.base, store)
        lineage["base"] = base
    return base


def _sft(
    store: Store, config: Config, base: str, lineage: dict, steps: dict, progress: bool
) -> tuple[str, str, list[dict]]:
    """3. SFT on the built-in instructions and/or given data; returns (SFT model, held-out instructions'
    dataset, their rows)."""
    kinds = config.instructions
    unknown = [k for k in kinds if k not in INSTRUCTIONS]
    if unknown:
        raise HeredityError(
            f"unknown instruction kind(s) {', '.join(unknown)}; available: {', '.join(INSTRUCTIONS)}"
        )
    sft_rows: list[dict] = []
    sft_inputs: list[str] = []
    if config.builtin_sft:
        sft_rows += [
            {"prompt": r["prompt"], "completion": r["completion"]}
            for r in instruction_rows(kinds, config.sft_rows_per_task, "train", config.seed)
        ]
    for ref in config.sft_data:
        did = _dataset(store, ref)
        sft_inputs.append(did)
        sft_rows += sft_rows_from(read_table(store.path(did)))
    if not sft_rows:
        raise HeredityError("no SFT data: keep builtin_sft or give sft_data")
    sft_rows = _uniform(sft_rows)
    sft_data = put_rows(
        store,
        sft_rows,
        "sft-data",
        op="make-sft-data",
        config={"builtin": config.builtin_sft, "kinds": kinds},
        inputs=sft_inputs,
    )
    eval_rows = instruction_rows(kinds, config.eval_rows_per_task, "eval", config.seed + 1)
    eval_id = put_rows(
        store, eval_rows, "instructions-eval", op="make-sft-data", config={"part": "eval", "kinds": kinds}
    )
    sft = finetune(store, base, sft_data, config.sft, progress=progress)
    steps["sft"] = sft.metrics
    sft_model = (
        sft["model"] if store.get(sft["model"]).kind == "model" else merge_adapter(store, sft["model"], "sft")
    )
    lineage.update(sft_data=sft_data, sft=sft_model)
    return sft_model, eval_id, eval_rows


def _preference_data(
    store: Store, config: Config, sft_model: str, progress: bool
) -> tuple[list[str], str | None]:
    """4a. The training RM's preference datasets (synthetic pairs less the judge's share, then given data) and
    the judge RM's pairs (None without a judge)."""
    pref_ids: list[str] = []
    judge_pairs = None
    if config.synthetic_preferences:
        synthetic = _synthetic_pairs(store, config, sft_model, progress)
        if config.judge_fraction > 0:
            parts = _split_for_judge(store, config, synthetic)
            pref_ids.append(parts["train"])
            judge_pairs = parts["judge"]
        else:
            pref_ids.append(synthetic)
    pref_ids += [_dataset(store, ref) for ref in config.preference_data]
    if not pref_ids:
        raise HeredityError("no preference data: keep synthetic_preferences or give preference_data")
    return pref_ids, judge_pairs


def _synthetic_pairs(store: Store, config: Config, sft_model: str, progress: bool) -> str:
    """Pairs ranked by the built-in rule over the SFT model's own samples (step
    ``make-synthetic-preferences``)."""
    pref_rows = instruction_rows(
        config.instructions, config.preference_prompts_per_task, "train", config.seed + 2
    )
    sampling = SampleConfig(
        temperature=1.0,
        n=config.preference_samples,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        batch_size=PREFERENCE_BATCH,
    )
    cfg = {
        "rule": "correct-and-concise > correct-but-wordy > wrong",
        "sampling": sampling.model_dump(),
        "rows_sha256": rows_digest(pref_rows),
        "seed": config.seed,
    }

    def make_pairs(ctx):
        s = SampleConfig(**ctx.config["sampling"])
        model, tok = load(sft_model, store)
        comps = sample(model, tok, [r["prompt"] for r in pref_rows], s, progress=progress)
        own = [[c.text for c in comps[i * s.n : (i + 1) * s.n]] for i in range(len(pref_rows))]
        pairs = synthetic_preferences(pref_rows, own, ctx.config["seed"])
        out = ctx.output(
            "dataset", "dataset", "preferences-synthetic", meta={"rows": len(pairs), "synthetic": True}
        )
        write_table(out, pairs)
        return {"rows": len(pairs), "prompts": len(pref_rows)}

    return store.run_step("make-synthetic-preferences", cfg, [sft_model], make_pairs, seed=config.seed)[
        "dataset"
    ]


def _split_for_judge(store: Store, config: Config, synthetic: str) -> dict:
    """The synthetic pairs split by prompt into the training RM's and the judge RM's (step
    ``split-preferences``); returns the step's {train, judge} dataset ids."""

    def split(ctx):
        rows = read_table(store.path(synthetic)).to_pylist()
        train, judge = split_pairs(rows, ctx.config["judge_fraction"], ctx.config["seed"])
        for role, part in (("train", train), ("judge", judge)):
            out = ctx.output(
                role,
                "dataset",
                f"preferences-synthetic-{role}",
                meta={
                    "rows": len(part),
                    "synthetic": True,
                    "prompts": len({repr(r["prompt"]) for r in part}),
                },
            )
            write_table(out, part)
        return {"train_pairs": len(train), "judge_pairs": len(judge)}

    return store.run_step(
        "split-preferences",
        {"by": "prompt", "judge_fraction": config.judge_fraction, "seed": config.seed},
        [synthetic],
        split,
    )


def _reward_models(
    store: Store,
    config: Config,
    sft_model: str,
    pref_ids: list[str],
    judge_pairs: str | None,
    lineage: dict,
    steps: dict,
    progress: bool,
) -> tuple[str, str | None]:
    """4b. The training RM on ``pref_ids`` and, given its pairs, the judge RM; returns their model ids."""
    rm = reward_step(store, sft_model, pref_ids, config.reward, progress=progress)
    steps["reward"] = _rm_metrics(rm.metrics)
    rm_id = rm["model"]
    lineage.update(preferences=",".join(pref_ids), reward_model=rm_id)
    judge_id = None
    if judge_pairs is not None:
        judge = reward_step(
            store, sft_model, [judge_pairs], config.reward, name="judge-reward-model", progress=progress
        )
        steps["judge"] = _rm_metrics(judge.metrics)
        judge_id = judge["model"]
        lineage.update(judge_preferences=judge_pairs, judge_reward_model=judge_id)
    return rm_id, judge_id


def _rl(
    store: Store,
    config: Config,
    sft_model: str,
    rm_id: str,
    pref_ids: list[str],
    lineage: dict,
    steps: dict,
    progress: bool,
) -> str:
    """5. PPO or GRPO against the training RM on RL prompts, or DPO on the preference pairs; the model id."""
    kinds = config.instructions
    rl_rows = instruction_rows(kinds, config.rl_prompts_per_task, "train", config.seed + 3)
    rl_prompts = put_rows(
        store,
        [{"prompt": r["prompt"], "task": r["task"]} for r in rl_rows],
        "rl-prompts",
        op="make-sft-data",
        config={"part": "rl", "kinds": kinds},
    )
    if config.rl == "ppo":
        rl = ppo_step(store, sft_model, rm_id, rl_prompts, config.ppo, progress=progress)
    elif config.rl == "grpo":
        rl = grpo_step(store, sft_model, rm_id, rl_prompts, config.trl, progress=progress)
    else:
        rl = dpo_step(store, sft_model, pref_ids, config.trl, progress=progress)
    steps["rl"] = rl.metrics
    lineage["rl"] = rl["model"]
    return rl["model"]


def _evaluate(
    store: Store,
    config: Config,
    evals: dict[str, str],
    eval_id: str,
    rm_id: str,
    judge_id: str | None,
    progress: bool,
) -> dict[str, dict]:
    """6. Each model's graded greedy answers to the held-out instructions, with each answer's reward under the
    training RM (and the judge RM)."""
    results = {}
    for label, mid in evals.items():
        r = _answers(store, mid, eval_id, config, progress)
        r["rewards"] = _rewards(store, r["id"], eval_id, rm_id)
        if judge_id:
            r["judge_rewards"] = _rewards(store, r["id"], eval_id, judge_id)
        results[label] = r
    return results


# ---- data and evaluation steps -------------------------------------------------------------------


def _dataset(store: Store, ref: str) -> str:
    """A dataset id from an id, an id prefix or a JSONL/parquet file."""
    from heredity.data import import_dataset
    from heredity.store.store import ID_PREFIX_RE

    return store.resolve_id(ref) if ID_PREFIX_RE.match(ref) else import_dataset(store, ref)


def sft_rows_from(table) -> list[dict]:
    """prompt/completion rows from a prompt/completion table or a ``messages`` table (the last assistant turn
    is the completion, everything before it the prompt)."""
    cols = table.column_names
    if "prompt" in cols and "completion" in cols:
        return table.select(["prompt", "completion"]).to_pylist()
    if "messages" in cols:
        rows = []
        for msgs in table.column("messages").to_pylist():
            msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
            if len(msgs) >= 2 and msgs[-1]["role"] == "assistant":
                rows.append({"prompt": msgs[:-1], "completion": msgs[-1]["content"]})
        return rows
    raise HeredityError(f"SFT data needs prompt/completion or messages columns, got {', '.join(cols)}")


def _uniform(rows: list[dict]) -> list[dict]:
    """One prompt type per dataset: if any prompt is a message list, every prompt becomes one."""
    if any(isinstance(r["prompt"], list) for r in rows):
        return [{"prompt": as_messages(r["prompt"]), "completion": r["completion"]} for r in rows]
    return rows


@op(
    "eval-instructions",
    3,
    note="v2: grader and sampling keyed; v3: the fused decode step refused for mlp_bias / sliding-window "
    "models, whose samples it got wrong",
)
def _answers(store: Store, model_id: str, eval_id: str, config: Config, progress: bool) -> dict:
    """Greedy answers of ``model_id`` to the held-out instructions (read from ``eval_id``), graded by exact
    match of the first line (memoized). Returns {answers, correct, tasks, id}."""
    sampling = SampleConfig(temperature=0, max_new_tokens=config.max_new_tokens, batch_size=EVAL_BATCH)
    cfg = {"decoding": "greedy", "grader": "exact-match-first-line", "sampling": sampling.model_dump()}

    def fn(ctx):
        rows = read_table(store.path(eval_id)).to_pylist()
        model, tok = load(model_id, store, merge_adapter=True)
        comps = sample(
            model, tok, [r["prompt"] for r in rows], SampleConfig(**ctx.config["sampling"]), progress=progress
        )
        answers = [c.text for c in comps]
        correct = [int(grade(a, r["completion"])) for a, r in zip(answers, rows, strict=True)]
        out = ctx.output("scores", "report", f"instruction-eval-{store.get(model_id).name}")
        (out / "scores.json").write_text(
            json.dumps({"answers": answers, "correct": correct, "tasks": [r.get("task", "") for r in rows]})
        )
        return {"accuracy": sum(correct) / len(correct)}

    rid = store.run_step("eval-instructions", cfg, [model_id, eval_id], fn)["scores"]
    return {**json.loads((store.path(rid) / "scores.json").read_text()), "id": rid}


@op("score-answers", 1)
def _rewards(store: Store, answers_id: str, eval_id: str, rm_id: str) -> list[float]:
    """The reward model ``rm_id``'s score of each stored answer to its held-out prompt (memoized)."""
    cfg = {"scorer": "reward-model", "answers": "scores.json"}

    def fn(ctx):
        from heredity.models.registry import default_device

        prompts = read_table(store.path(eval_id)).column("prompt").to_pylist()
        answers = json.loads((store.path(answers_id) / "scores.json").read_text())["answers"]
        _, reward_fn = reward_function(store, rm_id, default_device())
        rewards = reward_fn(prompts, answers)
        out = ctx.output("rewards", "report", f"rewards-{store.get(rm_id).name}")
        (out / "rewards.json").write_text(json.dumps({"rewards": rewards}))
        return {"mean_reward": sum(rewards) / len(rewards)}

    rid = store.run_step("score-answers", cfg, [answers_id, eval_id, rm_id], fn)["rewards"]
    return json.loads((store.path(rid) / "rewards.json").read_text())["rewards"]


def _rm_metrics(metrics: dict) -> dict:
    """A reward step's metrics with its held-out pairwise accuracy as a Wilson interval over the non-tied
    pairs."""
    wins = metrics.get("eval_wins") or []
    decided = [w for w in wins if w != 0.5]
    return {
        **{k: v for k, v in metrics.items() if k != "eval_wins"},
        "eval_accuracy_ci": rate_ci(sum(1 for w in decided if w == 1.0), len(decided)),
        "eval_ties": len(wins) - len(decided),
    }


# ---- statistics and the report -------------------------------------------------------------------


def build_report(config: Config, steps: dict, results: dict, eval_rows: list[dict], lineage: dict) -> dict:
    rl_label = config.rl.upper()
    base_label = next(iter(results))
    acc = {label: _accuracy(config, r) for label, r in results.items()}
    tests = _stage_tests(results, base_label, rl_label)
    sft, rlr = results["SFT"], results[rl_label]
    judges = _win_shares(sft, rlr)
    rm, judge = steps["reward"], steps.get("judge")
    shown = _shown_samples(config, eval_rows, sft, rlr, bool(judges["judge_rm"]))
    pre = steps.get("pretrain")
    outcome = _outcome(config, acc, tests, judges, rm, judge, pre, len(eval_rows), base_label)
    return {
        "config": config.model_dump(),
        "lineage": lineage,
        "pretrain": pre,
        "tokenizer": steps.get("tokenizer"),
        "sft": {k: v for k, v in steps["sft"].items() if k != "loss_curve"},
        "sft_curve": steps["sft"].get("loss_curve"),
        "reward": rm,
        "judge": judge,
        "rl": steps["rl"],
        "accuracy": acc,
        "tests": tests,
        "win_rate": judges,
        "samples": shown,
        "nanogpt": NANOGPT,
        "outcome": outcome,
    }


def _accuracy(config: Config, r: dict) -> dict:
    """One model's held-out accuracy (overall and per instruction kind, Wilson intervals) and mean rewards."""
    per_task = {
        task: rates_ci([c for c, t in zip(r["correct"], r["tasks"], strict=True) if t == task])
        for task in config.instructions
    }
    out = {
        "overall": rates_ci(r["correct"]),
        "per_task": per_task,
        "mean_reward": mean_ci(r["rewards"]),
    }
    if r.get("judge_rewards") is not None:
        out["mean_judge_reward"] = mean_ci(r["judge_rewards"])
    return out


def _stage_tests(results: dict, base_label: str, rl_label: str) -> dict:
    """SFT vs the model before it and RL vs SFT: exact McNemar tests over the same held-out instructions,
    hypothesis: each stage raises accuracy."""
    tests = {}
    for key, (a, b) in {"sft_vs_base": ("SFT", base_label), "rl_vs_sft": (rl_label, "SFT")}.items():
        t = paired_rate_test(results[a]["correct"], results[b]["correct"], UNIT)
        tests[key] = {**t, "a": a, "b": b, "verdict": verdict(t, 1)}
    return tests


def _win_shares(sft: dict, rlr: dict) -> dict:
    """The RL model's win share over SFT judged by the training RM and (when trained) by the judge RM."""
    judges = {
        "training_rm": win_share(sft["rewards"], rlr["rewards"], sft["answers"], rlr["answers"]),
        "judge_rm": None,
    }
    if sft.get("judge_rewards") is not None and rlr.get("judge_rewards") is not None:
        judges["judge_rm"] = win_share(
            sft["judge_rewards"], rlr["judge_rewards"], sft["answers"], rlr["answers"]
        )
    return judges


def win_share(
    base: list[float], other: list[float], base_answers: list[str], other_answers: list[str]
) -> dict:
    """``other`` vs ``base`` judged prompt by prompt by one reward model: wins (other's reward higher), ties
    (the same answer, or equal rewards) and losses. The win share is wins / (wins + losses) with a Wilson
    interval (ties carry no preference, so they are counted and set aside); the test is the exact two-sided
    sign test (McNemar on the wins vs losses; Δ = (wins − losses) / n with Newcombe's interval)."""
    tie = [x == y or a == b for a, b, x, y in zip(base, other, base_answers, other_answers, strict=True)]
    won = [int(not t and b > a) for a, b, t in zip(base, other, tie, strict=True)]
    lost = [int(not t and b < a) for a, b, t in zip(base, other, tie, strict=True)]
    w, lo = sum(won), sum(lost)
    test = {**paired_rate_test(won, lost, UNIT), "test": "exact sign test"}
    return {
        "wins": w,
        "ties": len(tie) - w - lo,
        "losses": lo,
        "n": len(tie),
        "share": rate_ci(w, w + lo),
        "test": test,
        "verdict": verdict(test, 1),
    }


def _shown_samples(config: Config, eval_rows: list[dict], sft: dict, rlr: dict, judged: bool) -> list[dict]:
    """``samples_shown`` held-out prompts spread over the eval set, with SFT's and the RL model's answers and
    rewards."""
    shown = []
    for i in range(min(config.samples_shown, len(eval_rows))):
        j = (i * len(eval_rows)) // max(1, config.samples_shown)
        shown.append(
            {
                "prompt": eval_rows[j]["prompt"],
                "reference": eval_rows[j]["completion"],
                "sft": sft["answers"][j],
                "sft_reward": round(sft["rewards"][j], 3),
                "rl": rlr["answers"][j],
                "rl_reward": round(rlr["rewards"][j], 3),
                **(
                    {
                        "sft_judge": round(sft["judge_rewards"][j], 3),
                        "rl_judge": round(rlr["judge_rewards"][j], 3),
                    }
                    if judged
                    else {}
                ),
            }
        )
    return shown


def _share_words(w: dict) -> str:
    return (
        f"{fmt_ci(w['share'], 2)} ({w['wins']} wins / {w['ties']} ties / {w['losses']} losses; "
        f"{fmt_test(w['test'], 2)}: {w['verdict']['words']})"
    )


def _outcome(
    config: Config,
    acc: dict,
    tests: dict,
    judges: dict,
    rm: dict,
    judge: dict | None,
    pre: dict | None,
    n_eval: int,
    base_label: str,
) -> str:
    """The outcome line: accuracy SFT → RL with its test, the win shares by both judges, RM accuracies and the
    pretraining perplexity, and the unit the intervals are about."""
    rl_label = config.rl.upper()
    rt, st = tests["rl_vs_sft"], tests["sft_vs_base"]
    return (
        f"Held-out exact-match accuracy ({n_eval} instructions, greedy): SFT "
        f"{fmt_ci(acc['SFT']['overall'], 2)} → "
        f"{rl_label} {fmt_ci(acc[rl_label]['overall'], 2)}, {fmt_test(rt)}: {rt['verdict']['words']} "
        f"({base_label} → SFT: {st['verdict']['words']}). "
        f"{rl_label} win share over SFT on non-tied held-out prompts, judged by the training RM "
        f"({TRAINING_RM[config.rl]}): "
        f"{_share_words(judges['training_rm'])}; "
        + (
            "judged by the judge RM (trained on disjoint prompts, never optimized against): "
            f"{_share_words(judges['judge_rm'])}. "
            if judges["judge_rm"]
            else "no judge RM (judge_fraction = 0 or no synthetic pairs). "
        )
        + f"Reward model held-out pairwise accuracy {fmt_ci(rm['eval_accuracy_ci'], 2)}"
        + (f", judge RM {fmt_ci(judge['eval_accuracy_ci'], 2)}" if judge else "")
        + (
            f"; pretraining val perplexity {pre['val_perplexity']:.1f} "
            f"({pre['val_nats_per_char']:.2f} nats/char)"
            if pre
            else ""
        )
        + ". One trained model per stage, one training seed: intervals and p-values are over held-out items "
        "and describe these trained models, not the recipe in general"
    )
