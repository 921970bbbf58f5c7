"""Data quality vs quantity: how many instruction examples a model needs, which ones, and what it inherits
from the rule that chose them (after LIMA, AlpaGasus, *Long Is More*, Superfiltering and IFEval).

Methods, as a paper's section would list them:
1. Bases: the ``chatgpt`` pipeline's model pretrained from scratch (same tokenizer and pretraining steps, so a
   store that ran ``chatgpt`` reuses them: a true base that has never seen an instruction, LIMA's setting at
   small scale) and, per ``bases``, any model spec (the bundled SmolLM2-135M-Instruct: already tuned, what
   further selection adds or removes).
2. Pool: the training part of the built-in instructions with exactly graded answers (``data.instructions``)
   and of the IFEval-style constraint prompts (``data.constraints``), each answered ``answers`` times by the
   ``writer`` (any model spec or ``openai:`` endpoint; SmolLM2 at T = 0.7 by default) and, for the graded
   instructions, by the ``template`` writer of the chatgpt pipeline's synthetic preferences (the reference
   answer, the same wrapped in filler words, a plausible wrong answer: clearly labelled synthetic), plus the
   rows of a user's ``instruction_file``. Each row is scored once (``data.pool``): length, IFD under the
   ``scorer`` (Superfiltering), exact correctness, IFEval strict/loose, and the selection reward model's
   score.
3. Reward models: the chatgpt pipeline's recipe (``engine.reward``, Bradley–Terry on a scalar head over the
   tiny base). Pairs come from the pool's prompts: the synthetic rule on graded instructions (correct and
   concise > correct but wordy > wrong) and "follows every constraint > does not" on constraint prompts.
   The pairs are split by prompt: the *selection RM* (AlpaGasus' judge: the ``reward`` rule) learns from one
   half, the *judge RM* from the other; the judge never selects anything.
4. Arms, per base and training seed: each rule of ``data.selection`` (random, longest, IFD, reward,
   verified) at each N of ``sizes``; the whole pool (``all``); and quality vs quantity: ``verified`` at N
   against ``noisy`` at 3N with ``wrong_share`` verified-wrong rows. Every arm trains for the same number of
   optimizer steps (equal compute: a smaller set is seen more often), seed s for its data draw and training.
5. Measures on held-out instructions and constraint prompts (their words, numbers and subjects never in the
   pool; two-constraint prompts combine kinds never paired in training), greedy answers: exact accuracy,
   IFEval strict and loose accuracy; the judge RM's win rate against the random arm at the same N, raw and
   length-controlled (AlpacaEval's idea: a logistic fit of the win on the tanh-squashed length difference,
   read at equal length); inheritance: answer length, vocabulary diversity (distinct bigrams) and the
   selection RM's taste (its score gain over the judge's) against the random arm.
6. Statistics: the Holm family (declared in the config) holds, per base, every rule against random at the
   same N and verified N against noisy 3N, on the held-out success rate (exact for graded items, strict for
   constraint items). With ≥ 2 training seeds the test is a paired t over seeds (a claim about the selection
   method); with one seed, McNemar's exact test over items (a claim about these trained models, worded so).
"""

from __future__ import annotations

import json
import random
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from heredity.data import put_rows
from heredity.data.constraints import constraint_rows, kind_pair
from heredity.data.instruction_file import read_instructions
from heredity.data.instructions import INSTRUCTIONS, instruction_rows, synthetic_preferences, verbose, wrong
from heredity.data.pool import checks, score_pool
from heredity.data.selection import RULES, noisy, select
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample
from heredity.engine.pretrain import PretrainConfig
from heredity.engine.reward import RewardConfig, reward_function, reward_step, split_pairs
from heredity.engine.sampling import sample_step
from heredity.errors import HeredityError
from heredity.experiments import experiment
from heredity.experiments.data_quality_render import markdown, plot
from heredity.experiments.data_quality_stats import analyse, family
from heredity.reports.card import save_card
from heredity.reports.stats import declared_family
from heredity.store import Store, read_table, write_table
from heredity.store.ops import op, rows_op

rows_op("make-instruction-pool", "select-instructions", "make-quality-eval")  # by data.io.put_rows
TINY = "tiny-base"  # the label of the chatgpt pipeline's pretrained base among ``bases``
EVAL_BATCH = 64
PUBLISHED = [
    (
        "LIMA (Zhou et al. 2023)",
        "1,000 curated examples align a 65B base; equivalent or preferred to GPT-4 in 43%",
    ),
    ("AlpaGasus (Chen et al. 2024)", "9k of Alpaca's 52k kept by a judge's score beat all 52k; 5.7× faster"),
    ("Long Is More (Zhao et al. 2024)", "the 1,000 longest answers beat LIMA's and AlpaGasus' selections"),
    ("Superfiltering (Li et al. 2024)", "5% of Alpaca by a small model's IFD beats 100%"),
    ("IFEval (Zhou et al. 2023)", "verifiable constraints graded strict and loose by a program"),
]


class Base(BaseModel):
    """One base model and the grid trained on it (an unknown field is an error, never dropped)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(TINY, description=f"{TINY!r} = the chatgpt pipeline's pretrained base, or any spec")
    sizes: list[int] = Field(default_factory=lambda: [100, 300], description="N per selection rule")
    rules: list[Literal["random", "longest", "ifd", "reward", "verified"]] = Field(
        default_factory=lambda: list(RULES)
    )
    all_data: bool = Field(True, description="also train on the whole pool")
    noisy_sizes: list[int] = Field(
        default_factory=lambda: [100], description="N where verified N meets noisy 3N (a subset of sizes)"
    )
    train: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(
            method="full", lr=1e-3, max_steps=150, batch_size=16, max_length=256, warmup_ratio=0.05
        )
    )
    seeds: int = Field(3, ge=1, description="training seeds per arm (≥ 2 for a claim about a rule)")

    @model_validator(mode="after")
    def _grid(self):
        if "random" not in self.rules:
            raise ValueError("rules must hold 'random': every rule is measured against it")
        if not self.sizes or any(n < 1 for n in self.sizes):
            raise ValueError(f"sizes must be N ≥ 1, got {self.sizes}")
        extra = [n for n in self.noisy_sizes if n not in self.sizes]
        if extra:
            raise ValueError(f"noisy_sizes {extra} are not in sizes {self.sizes}: verified N needs its arm")
        if self.noisy_sizes and "verified" not in self.rules:
            raise ValueError("noisy_sizes compares verified N with noisy 3N: add 'verified' to rules")
        if self.train.max_steps is None:
            raise ValueError("train.max_steps must be set: every arm trains for the same number of steps")
        return self

    @property
    def label(self) -> str:
        return self.model


class Config(BaseModel):
    bases: list[Base] = Field(
        default_factory=lambda: [
            Base(),
            Base(
                model="smollm2-135m-instruct",
                sizes=[100],
                rules=["random", "longest", "reward"],
                all_data=False,
                noisy_sizes=[],
                train=FinetuneConfig(
                    method="lora",
                    lr=5e-4,
                    max_steps=25,
                    batch_size=8,
                    lora_r=16,
                    lora_alpha=32,
                    max_length=256,
                ),
                seeds=1,
            ),
        ]
    )
    # the tiny base: the chatgpt pipeline's tokenizer and pretraining (its quick preset's: shared steps)
    vocab_size: int = Field(2048, ge=300)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    # the pool
    instructions: list[str] = Field(default_factory=lambda: list(INSTRUCTIONS))
    pool_per_kind: int = Field(60, ge=1, description="graded training instructions per kind")
    pool_constraints: int = Field(120, ge=0, description="constraint training prompts")
    writer: str = Field("smollm2-135m-instruct", description="the model (or openai: endpoint) that answers")
    answers: int = Field(2, ge=1, description="the writer's answers per prompt")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=1, description="for the writer's and the evaluated models' answers")
    template_writer: bool = Field(
        True, description="add the synthetic reference / wordy / wrong answers to graded instructions"
    )
    instruction_file: str | None = Field(
        None, description="a user's Alpaca / LIMA / prompt-completion file joining the pool ('' = required)"
    )
    scorer: str = Field("smollm2-135m-instruct", description="the small model whose IFD the ifd rule reads")
    # reward models
    reward: RewardConfig = Field(default_factory=lambda: RewardConfig(epochs=2, lr=2e-4, batch_size=32))
    judge_fraction: float = Field(0.5, gt=0, lt=1, description="share of pool prompts for the judge RM")
    # selection and evaluation
    wrong_share: float = Field(0.5, gt=0, lt=1, description="share of verified-wrong rows in noisy 3N")
    eval_per_kind: int = Field(12, ge=2)
    eval_constraints: int = Field(48, ge=0)
    boot: int = Field(1000, ge=100, description="bootstrap draws for the win rates")
    holm_family: list[str] | None = Field(None, description="the tests of one Holm family (default: all)")
    seed: int = 0

    @model_validator(mode="after")
    def _checked(self):
        labels = [b.label for b in self.bases]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"bases must name distinct models, got {labels}")
        unknown = [k for k in self.instructions if k not in INSTRUCTIONS]
        if unknown:
            raise ValueError(f"unknown instruction kind(s) {unknown}; available: {list(INSTRUCTIONS)}")
        self.holm_family = declared_family(self.holm_family, family(self))
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        # the long grid is two presets over one pool, held-out set and pair of RMs (shared store steps), one
        # report each: on 2 CPU cores SmolLM2's arms (a LoRA run and 300 greedy answers of up to 96 tokens
        # per seed) cost far more than the tiny base's, so each report fits a session of its own
        long_pool = dict(
            pool_per_kind=250, pool_constraints=400, max_new_tokens=96, eval_per_kind=30, eval_constraints=120
        )
        tiny_long = Base(sizes=[100, 300, 1000], noisy_sizes=[100, 300], seeds=3)
        smol_long = Base(
            model="smollm2-135m-instruct",
            sizes=[100],
            rules=list(RULES),
            all_data=False,
            noisy_sizes=[100],
            train=FinetuneConfig(
                method="lora", lr=5e-4, max_steps=30, batch_size=8, lora_r=16, lora_alpha=32, max_length=256
            ),
            seeds=3,
        )
        return {
            "quick": cls(),
            "long": cls(bases=[tiny_long], **long_pool),
            "long-smollm2": cls(bases=[smol_long], **long_pool),
            "paper": cls(
                bases=[
                    Base(
                        model="HuggingFaceTB/SmolLM2-1.7B",
                        sizes=[1000, 3000, 9000],
                        noisy_sizes=[1000],
                        train=FinetuneConfig(
                            method="lora", lr=2e-4, max_steps=600, batch_size=32, lora_r=16, lora_alpha=32
                        ),
                        seeds=3,
                    )
                ],
                instruction_file="",
                writer="HuggingFaceTB/SmolLM2-1.7B-Instruct",
                scorer="smollm2-135m-instruct",
                pool_per_kind=500,
                pool_constraints=2000,
                max_new_tokens=256,
                eval_per_kind=50,
                eval_constraints=300,
            ),
        }


@experiment(
    "data-quality",
    question="How many instruction examples does a model need, which ones, and what does it inherit from the "
    "rule that chose them?",
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    file_rows = _file_rows(config)  # a user's file is read and checked before any compute
    lineage: dict[str, str] = {}
    tiny = _tiny_base(store, config, lineage, progress)
    pool_id = _pool(store, config, file_rows, progress)
    scored_id = score_pool(store, pool_id, config.scorer, progress=progress)
    sel_rm, judge_rm, rm_metrics = _reward_models(store, config, scored_id, tiny, progress)
    pool_rows = read_table(store.path(scored_id)).to_pylist()
    rewards = _rm_scores(store, scored_id, sel_rm)
    pool_rows = [{**r, "reward": x} for r, x in zip(pool_rows, rewards, strict=True)]
    lineage.update(pool=pool_id, scored_pool=scored_id, selection_rm=sel_rm, judge_rm=judge_rm)
    eval_rows, eval_id = _eval_set(store, config)
    _check_disjoint(pool_rows, eval_rows)

    results: dict[str, dict] = {}
    trained: list[str] = []
    for base in config.bases:
        base_id = tiny if base.model == TINY else base.model
        arms = _arms(base, pool_rows, config.wrong_share)
        out = {"base": _evaluate(store, config, base_id, eval_id, sel_rm, judge_rm, progress), "arms": {}}
        for label, picks in arms.items():
            out["arms"][label] = []
            for s in range(base.seeds):
                rows = picks(s)
                data_id = put_rows(
                    store,
                    [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows],
                    f"dq-{label.replace('@', '-')}",
                    op="select-instructions",
                    config={"arm": label, "seed": s},
                    inputs=[scored_id, sel_rm],
                )
                ft = base.train.model_copy(update={"seed": s})
                model = finetune(store, base_id, data_id, ft, progress=progress)["model"]
                trained.append(model)
                ev = _evaluate(store, config, model, eval_id, sel_rm, judge_rm, progress)
                out["arms"][label].append({**ev, "model": model, "data": data_id, "selected": _profile(rows)})
        results[base.label] = out

    report = analyse(config, results, eval_rows, pool_rows, rm_metrics)
    report.update(
        lineage=lineage,
        pool=_pool_profile(pool_rows),
        published=[{"source": s, "finding": f} for s, f in PUBLISHED],
        seconds=round(time.perf_counter() - t0, 1),
    )
    card = save_card(store, "data-quality", report, [scored_id, sel_rm, judge_rm, *trained], markdown, plot)
    return {**card, "lineage_of": trained[-1] if trained else scored_id}


# ---- the pool --------------------------------------------------------------------------------------


def _file_rows(config: Config) -> list[dict]:
    if config.instruction_file is None:
        return []
    if config.instruction_file == "":
        raise HeredityError(
            "this preset selects from your instruction set: --set instruction_file=PATH "
            "(Alpaca JSON, LIMA or prompt/completion JSONL)"
        )
    return read_instructions(config.instruction_file)


def _tiny_base(store: Store, config: Config, lineage: dict, progress: bool) -> str:
    """The chatgpt pipeline's tokenizer and pretrained base (its own steps: shared with ``chatgpt``): a base
    to fine-tune, and where both reward models start, so it is built whichever bases the grid trains."""
    from heredity.experiments.chatgpt import Config as ChatConfig
    from heredity.experiments.chatgpt import _base_model

    cc = ChatConfig(vocab_size=config.vocab_size, pretrain=config.pretrain, seed=config.seed)
    return _base_model(store, cc, lineage, {}, progress)


def _prompts(config: Config) -> tuple[list[dict], list[dict]]:
    graded = instruction_rows(config.instructions, config.pool_per_kind, "train", config.seed)
    cons = constraint_rows(config.pool_constraints, "train", seed=config.seed)
    return graded, cons


def _pool(store: Store, config: Config, file_rows: list[dict], progress: bool) -> str:
    """The pool: every writer's answer to every training prompt, with what makes it checkable."""
    graded, cons = _prompts(config)
    sources = [
        {"prompt": r["prompt"], "reference": r["completion"], "constraints": None, "task": r["task"]}
        for r in graded
    ] + [{"prompt": r["prompt"], "reference": None, "constraints": r["constraints"], "task": "constraints"}
         for r in cons]  # fmt: skip
    sampling = SampleConfig(
        temperature=config.temperature,
        top_p=config.top_p,
        n=config.answers,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        batch_size=EVAL_BATCH,
    )
    answers_id = sample_step(
        store,
        config.writer,
        [s["prompt"] for s in sources],
        sampling,
        name="writer-answers",
        progress=progress,
    )
    rows = []
    for a in read_table(store.path(answers_id)).to_pylist():
        text = a["completion"].strip()
        if text:  # an empty answer is nothing to train on (counted in the pool's profile as dropped)
            rows.append({**sources[a["prompt_index"]], "completion": text, "writer": config.writer})
    written = len(rows)
    if config.template_writer:
        rng = random.Random(config.seed)
        for r in graded:
            src = {
                "prompt": r["prompt"],
                "reference": r["completion"],
                "constraints": None,
                "task": r["task"],
            }
            for style, text in (
                ("template:reference", r["completion"]),
                ("template:wordy", verbose(r["completion"], rng)),
                ("template:wrong", wrong(r, rng)),
            ):
                rows.append({**src, "completion": text, "writer": style})
    rows += [
        {"prompt": r["prompt"], "reference": None, "constraints": None, "task": "file",
         "completion": r["completion"], "writer": "file"}
        for r in file_rows
    ]  # fmt: skip
    return put_rows(
        store,
        rows,
        "instruction-pool",
        op="make-instruction-pool",
        config={"writer": config.writer, "template_writer": config.template_writer,
                "dropped_empty": len(sources) * config.answers - written},
        inputs=[answers_id],
    )  # fmt: skip


@op("make-quality-preferences", 1)
def _reward_models(store: Store, config: Config, scored_id: str, tiny: str, progress: bool):
    """The selection RM and the judge RM: the chatgpt recipe on pairs from the pool's prompts, split by
    prompt (``judge_fraction`` to the judge); returns (selection RM, judge RM, their metrics)."""

    def make(ctx):
        rows = read_table(store.path(scored_id)).to_pylist()
        pairs = _pairs(rows, ctx.config["seed"])
        sel, judge = split_pairs(pairs, ctx.config["judge_fraction"], ctx.config["seed"])
        for role, part in (("selection", sel), ("judge", judge)):
            out = ctx.output(
                role, "dataset", f"preferences-{role}", meta={"rows": len(part), "synthetic": True}
            )
            write_table(out, part)
        return {"selection_pairs": len(sel), "judge_pairs": len(judge)}

    parts = store.run_step(
        "make-quality-preferences",
        {"rule": "correct-and-concise > correct-but-wordy > wrong; follows > does not follow",
         "judge_fraction": config.judge_fraction, "seed": config.seed},
        [scored_id],
        make,
    )  # fmt: skip
    sel = reward_step(
        store, tiny, [parts["selection"]], config.reward, name="selection-rm", progress=progress
    )
    judge = reward_step(store, tiny, [parts["judge"]], config.reward, name="judge-rm", progress=progress)
    metrics = {"selection": sel.metrics, "judge": judge.metrics, "pairs": parts.metrics}
    return sel["model"], judge["model"], metrics


def _pairs(rows: list[dict], seed: int) -> list[dict]:
    """Preference pairs over the pool: the chatgpt pipeline's synthetic rule on graded instructions (over
    every answer the pool holds for the prompt), and follows-every-constraint > does-not on constraint
    prompts (every such pair of answers to one prompt)."""
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        if r["task"] != "file":
            by_prompt.setdefault(r["prompt"], []).append(r)
    graded, own, pairs = [], [], []
    for prompt, group in by_prompt.items():
        if group[0]["reference"] is not None:
            graded.append({"prompt": prompt, "completion": group[0]["reference"], "task": group[0]["task"]})
            own.append([g["completion"] for g in group])
        else:
            good = [g["completion"] for g in group if g["strict"]]
            bad = [g["completion"] for g in group if g["strict"] is False]
            pairs += [
                {"prompt": prompt, "chosen": a, "rejected": b, "task": "constraints", "kind": "follows > not",
                 "source": "synthetic-rule"}
                for a in good for b in bad
            ]  # fmt: skip
    return synthetic_preferences(graded, own, seed) + pairs


@op("reward-score-rows", 1)
def _rm_scores(store: Store, dataset_id: str, rm_id: str) -> list[float]:
    """The reward model ``rm_id``'s score of every (prompt, completion) row of a stored dataset (memoized)."""

    def fn(ctx):
        from heredity.models.registry import default_device

        table = read_table(store.path(dataset_id))
        _, reward_fn = reward_function(store, rm_id, default_device())
        rewards = reward_fn(table.column("prompt").to_pylist(), table.column("completion").to_pylist())
        out = ctx.output("rewards", "report", f"rewards-{store.get(rm_id).name}")
        (out / "rewards.json").write_text(json.dumps({"rewards": rewards}))
        return {"mean_reward": sum(rewards) / len(rewards)}

    rid = store.run_step("reward-score-rows", {"scorer": "reward-model"}, [dataset_id, rm_id], fn)["rewards"]
    return json.loads((store.path(rid) / "rewards.json").read_text())["rewards"]


# ---- arms, evaluation ------------------------------------------------------------------------------


def _arms(base: Base, pool: list[dict], wrong_share: float) -> dict:
    """Arm label → (seed → the selected rows), every arm of ``base``'s grid; a rule that cannot fill N is
    refused here, before any training."""
    arms = {}
    for n in base.sizes:
        for rule in base.rules:
            arms[f"{rule}@{n}"] = lambda s, rule=rule, n=n: select(pool, rule, n, seed=s)
            arms[f"{rule}@{n}"](0)
    for n in base.noisy_sizes:
        arms[f"noisy@{3 * n}"] = lambda s, n=n: noisy(pool, 3 * n, wrong_share, seed=s)
        arms[f"noisy@{3 * n}"](0)
    if base.all_data:
        arms["all"] = lambda s: list(pool)
    return arms


def _eval_set(store: Store, config: Config) -> tuple[list[dict], str]:
    graded = instruction_rows(config.instructions, config.eval_per_kind, "eval", config.seed + 1)
    cons = constraint_rows(config.eval_constraints, "eval", seed=config.seed + 1)
    rows = [
        {"prompt": r["prompt"], "reference": r["completion"], "constraints": None, "task": r["task"]}
        for r in graded
    ] + [
        {"prompt": r["prompt"], "reference": None, "constraints": r["constraints"], "task": "constraints",
         "held_out_pair": kind_pair(r) is not None}
        for r in cons
    ]  # fmt: skip
    rows = [{**r, "held_out_pair": r.get("held_out_pair", False)} for r in rows]
    return rows, put_rows(
        store, rows, "quality-eval", op="make-quality-eval", config={"seed": config.seed + 1}
    )


def _check_disjoint(pool: list[dict], eval_rows: list[dict]) -> None:
    """No held-out prompt is in the pool (a broken split is an error, never a quiet leak)."""
    shared = {r["prompt"] for r in pool} & {r["prompt"] for r in eval_rows}
    if shared:
        raise HeredityError(
            f"{len(shared)} held-out prompts are in the training pool, e.g. {next(iter(shared))!r}"
        )


@op("eval-data-quality", 1)
def _evaluate(
    store: Store, config: Config, model: str, eval_id: str, sel_rm: str, judge_rm: str, progress: bool
) -> dict:
    """Greedy answers of ``model`` to the held-out set, graded (exact / strict / loose) and scored by both
    reward models (memoized). Returns per-item lists."""
    from heredity.models import materialize

    model_id = materialize(model, store)
    sampling = SampleConfig(temperature=0, max_new_tokens=config.max_new_tokens, batch_size=EVAL_BATCH)

    def fn(ctx):
        from heredity.models import load

        rows = read_table(store.path(eval_id)).to_pylist()
        m, tok = load(model_id, store, merge_adapter=True)
        comps = sample(
            m, tok, [r["prompt"] for r in rows], SampleConfig(**ctx.config["sampling"]), progress=progress
        )
        answers = [c.text.strip() for c in comps]
        graded = [checks({**r, "completion": a}) for r, a in zip(rows, answers, strict=True)]
        out = ctx.output("answers", "dataset", f"quality-answers-{store.get(model_id).name}")
        write_table(
            out,
            [
                {"prompt": r["prompt"], "completion": a, **g}
                for r, a, g in zip(rows, answers, graded, strict=True)
            ],
        )
        return {"verified": sum(bool(g["verified"]) for g in graded) / len(graded)}

    aid = store.run_step(
        "eval-data-quality",
        {"decoding": "greedy", "sampling": sampling.model_dump()},
        [model_id, eval_id],
        fn,
    )["answers"]
    rows = read_table(store.path(aid)).to_pylist()
    return {
        "id": aid,
        "answers": [r["completion"] for r in rows],
        "correct": [r["correct"] for r in rows],
        "strict": [r["strict"] for r in rows],
        "loose": [r["loose"] for r in rows],
        "selection_reward": _rm_scores(store, aid, sel_rm),
        "judge_reward": _rm_scores(store, aid, judge_rm),
    }


def _profile(rows: list[dict]) -> dict:
    """What a selection holds: its size, mean answer length, shares verified right and by writer."""
    n = len(rows)
    writers: dict[str, int] = {}
    for r in rows:
        writers[r["writer"]] = writers.get(r["writer"], 0) + 1
    known = [r["verified"] for r in rows if r["verified"] is not None]
    return {
        "rows": n,
        "mean_chars": sum(len(r["completion"]) for r in rows) / n,
        "verified_share": sum(known) / len(known) if known else None,
        "constraint_share": sum(r["task"] == "constraints" for r in rows) / n,
        "writers": {k: v / n for k, v in sorted(writers.items())},
    }


def _pool_profile(rows: list[dict]) -> dict:
    return {**_profile(rows), "prompts": len({r["prompt"] for r in rows})}
