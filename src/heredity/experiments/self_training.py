"""Self-training on verifiable problems (ReST-EM, rejection-sampling fine-tuning), round by round.

Methods (Singh et al. 2023/24; Yuan et al. 2023), at toy scale:
1. Problems: ``data.problems`` word problems (train mixes the difficulty levels ``levels``; test is in
   distribution; ood has one more step or digit), or the user's JSONL; a checker (``evals.verify``) decides.
2. Arms, each a chain of store steps (model → samples → verified set → next model):
   ``sft_gold`` fine-tunes the base on the program-written gold solutions (the "human data" baseline);
   ``rest_em`` samples ``samples`` solutions per train problem, keeps at most ``keep`` distinct verified ones
   per problem and fine-tunes **from the base** each round (fine-tuning rows are problem → solution without
   the worked examples, ``train_shots`` = 0; sampling and evaluation prompts carry ``shots`` worked examples
   for every model); ``rest_em_continue`` the same but from the previous round's model; ``rft`` is one
   round; ``compute_matched`` is one round with ``rounds`` × the samples (``rounds`` draws from the base, the
   first being ``rest_em``'s round-1 draw);
   ``star`` is ReST-EM plus STaR's rationalization: a problem with no verified sample is asked again with its
   answer as a hint, and a verified rationale is trained on with the question alone (Zelikman et al. 2022);
   ``grpo`` is GRPO through TRL with the checker as the reward, at the sample budget of ``rest_em``
   (rounds × samples × train problems completions, groups of ``samples``).
3. Evaluation per model: greedy pass@1 on test and ood (Wilson; unit: problems, one model), unbiased pass@k
   from ``eval_samples`` samples per test problem (bootstrap over problems), majority-vote accuracy, greedy
   train accuracy (the train–test gap), and what each round's kept set inherits: distinct solutions per
   problem, the share of each level kept, the mean answer length.

The unit of replication for every interval is problems (claims about one trained model per arm and round).
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field, model_validator

from heredity.data import put_rows
from heredity.data.problems import load_problems
from heredity.data.problems import problems as make_problems
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample_step
from heredity.errors import HeredityError
from heredity.evals.verify import final_answer, load_checker, pass_at_k
from heredity.experiments import experiment
from heredity.experiments.self_training_render import _find, _label, markdown, plot
from heredity.models import RemoteModel, materialize, merge_adapter, stack_adapters
from heredity.store import Store, read_table
from heredity.store.ops import op, rows_op

rows_op("make-verified-set")  # rows made here, stored by data.io.put_rows

ARMS = ("sft_gold", "rft", "rest_em", "rest_em_continue", "compute_matched", "star", "grpo")


def _ft(**kw) -> FinetuneConfig:
    return FinetuneConfig(
        **{
            "method": "lora",
            "loss": "completion_only",
            "lr": 5e-4,
            "lora_r": 16,
            "lora_alpha": 32,
            "epochs": 3,
            "batch_size": 16,
            "max_length": 256,
            "warmup_ratio": 0.05,
            **kw,
        }
    )


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    train_problems: int = Field(64, ge=1)
    test_problems: int = Field(32, ge=1)
    ood_problems: int = Field(32, ge=1)
    train_eval: int = Field(
        24,
        ge=1,
        description="greedy train accuracy on this many train problems, evenly spaced "
        "over the levels (the train–test gap)",
    )
    levels: list[int] = Field(
        default_factory=lambda: [1, 2, 3], description="steps per problem, mixed in train"
    )
    digits: int = Field(1, ge=1, le=3)
    test_steps: int = Field(2, ge=1, description="the test split's steps (in distribution: one of levels)")
    samples: int = Field(8, ge=1, description="solutions sampled per train problem per round")
    keep: int = Field(4, ge=1, description="at most this many distinct verified solutions kept per problem")
    rounds: int = Field(3, ge=1)
    temperature: float = Field(0.8, gt=0)
    max_new_tokens: int = Field(64, ge=8, description="a three-step solution is ~25 tokens")
    eval_samples: int = Field(16, ge=1)
    ks: list[int] = Field(default_factory=lambda: [1, 4, 16])
    arms: list[str] = Field(
        default_factory=lambda: [a for a in ARMS if a != "grpo"],
        description="grpo is optional (add it with --set): GRPO through TRL is slow on a CPU",
    )
    finetune: FinetuneConfig = Field(default_factory=_ft)
    problems_file: str | None = Field(
        None,
        description="a JSONL of your own problems ({question, answer, split}, "
        "optional solution, steps); then the problem counts and levels are not used",
    )
    checker: str | None = Field(
        None, description="module:function or regex:PATTERN (default: the strict #### checker)"
    )
    grpo_lr: float = Field(5e-6, gt=0)
    grpo_batch: int = Field(32, ge=2, description="GRPO completions per step (a multiple of samples)")
    shots: int = Field(
        2,
        ge=0,
        description="worked examples at the start of every sampling and evaluation prompt (0: zero-shot)",
    )
    train_shots: int = Field(
        0,
        ge=0,
        description=(
            "worked examples in the fine-tuning rows' prompts: 0 trains on problem -> solution, as ReST-EM "
            "and STaR do "
            "(and a third of the tokens); every model is still sampled and evaluated with `shots`"
        ),
    )
    sample_batch: int = Field(64, ge=1)
    endpoint: str | None = Field(
        None,
        description=(
            "base URL of an OpenAI-compatible server (vLLM) serving `base` with runtime LoRA loading: every "
            "sample and "
            "evaluation goes there, each round's adapter loaded by its id from this store (the server must "
            "read its "
            "files); fine-tuning stays in process. vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve "
            "BASE "
            "--enable-lora --max-lora-rank R (R >= lora_r, and >= rounds x lora_r for rest_em_continue, "
            "rounded up to "
            "one of vLLM's ranks: 8, 16, 32, 64, ...)"
        ),
    )
    endpoint_model: str | None = Field(
        None, description="the name the endpoint serves the base under (default: base)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm {bad[0]!r}; arms are {', '.join(ARMS)}")
        big = [k for k in self.ks if not 1 <= k <= self.eval_samples]
        if big:
            raise ValueError(
                f"pass@{big[0]} needs 1 <= k <= eval_samples ({self.eval_samples}); raise eval_samples or "
                "drop it"
            )
        if self.endpoint_model is not None and self.endpoint is None:
            raise ValueError(
                "endpoint_model names the base an endpoint serves; set endpoint too (or drop endpoint_model)"
            )
        if self.endpoint is not None:
            if not self.endpoint.startswith(("http://", "https://")):
                raise ValueError(
                    f"endpoint {self.endpoint!r} is not a URL; give the server's base, e.g. "
                    "http://localhost:8000/v1"
                )
            if self.finetune.method != "lora":
                raise ValueError(
                    "an endpoint serves trained models as LoRA adapters on its base; with endpoint set, "
                    "finetune.method must be lora"
                )
            if "grpo" in self.arms:
                raise ValueError(
                    "the grpo arm trains and samples in process (TRL), not through the endpoint; with "
                    "endpoint set, drop grpo from arms"
                )
        if "grpo" in self.arms and self.grpo_batch % self.samples:
            raise ValueError(
                f"grpo_batch {self.grpo_batch} must be a multiple of samples {self.samples} (GRPO's group "
                "size)"
            )
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        # paper: a <= 2B base (a hub id: needs the network once, and a GPU), harder problems (3-digit numbers,
        # 2-4 steps); MATH itself is not bundled — bring it as a JSONL with --set problems_file=... and a
        # checker
        return {
            "quick": cls(),
            "paper": cls(
                base="Qwen/Qwen2.5-1.5B-Instruct",
                levels=[2, 3, 4],
                digits=3,
                test_steps=3,
                train_problems=2000,
                test_problems=500,
                ood_problems=500,
                train_eval=500,
                samples=32,
                keep=10,
                max_new_tokens=256,
                eval_samples=32,
                sample_batch=128,
                ks=[1, 4, 16, 32],
                arms=list(ARMS),
            ),
        }


@experiment(
    "self-training", question="ReST-EM vs rejection sampling vs gold SFT on problems a program can check"
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    """The recipe: evaluate the base; train and evaluate each arm (gold SFT, the sample → verify → fine-tune
    chains, GRPO); compare the arms' last models on the same test problems; write the report card."""
    from heredity.reports.card import save_card

    t0 = time.perf_counter()
    lab = _Lab.open(store, config, progress)  # problems, checker and endpoint checked before any model work
    results: dict[str, list[dict]] = {
        "base": [{"round": 0, "model": lab.base, "eval": lab.ev(lab.base, "base")}]
    }
    if "sft_gold" in config.arms:
        results["sft_gold"] = _sft_gold(lab)
    for arm, (rounds, from_base, seeds) in _chains(config).items():
        if arm in config.arms:
            results[arm] = _chain(lab, arm, rounds, from_base, seeds)
    if "grpo" in config.arms:
        results["grpo"] = _grpo(lab)
    report = {
        "experiment": "self-training",
        "config": config.model_dump(),
        "results": results,
        "problems": {k: len(v) for k, v in lab.sets.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report["comparisons"] = compare(results)
    report["outcome"] = outcome(report)
    models = [x["model"] for rs in results.values() for x in rs if x.get("model")]
    card = save_card(store, "self-training", report, list(dict.fromkeys(models)), markdown, plot)
    return {**card, "lineage_of": card["report"]}


# ---- the arms: what ``run`` trains, step by step ----


@dataclass
class _Lab:
    """What every arm shares: the store, the config, the problems and their checker, the base model, the
    fine-tuning config, and the endpoint (None: everything in process)."""

    store: Store
    config: Config
    progress: bool
    check: Callable
    sets: dict[str, list[dict]]
    remote: RemoteModel | None
    base: str
    ft: FinetuneConfig

    @classmethod
    def open(cls, store: Store, config: Config, progress: bool) -> _Lab:
        check = load_checker(config.checker)
        # before any model work: a bad problem or checker is one line now, not after sampling
        sets = problem_sets(config)
        remote = (
            RemoteModel(config.endpoint_model or config.base, config.endpoint) if config.endpoint else None
        )
        if remote is not None:
            # before any work: a server that is down or serves another name is one line now
            remote.check_served()
        base = materialize(config.base, store)
        ft = config.finetune.model_copy(update={"seed": config.seed})
        return cls(store, config, progress, check, sets, remote, base, ft)

    def log(self, *a) -> None:
        if self.progress:
            print(*a, flush=True)

    def served(self, model: str) -> dict:
        """How sampling names ``model``: in process its id; at an endpoint the name the server serves it under
        (the base as it is, an adapter loaded by its id), with the stored model it stands for in the samples'
        lineage."""
        if self.remote is None:
            return {"model": model}
        remote = self.remote
        name = (
            remote.model if model == self.base else remote.load_adapter(model, self.store.path(model)).model
        )
        return {"model": f"openai:{name}@{remote.base_url}", "serves": model}

    def ev(self, model: str, label: str) -> dict:
        s = self.served(model)
        return evaluate(
            self.store,
            s["model"],
            self.sets,
            self.config,
            self.check,
            label,
            self.progress,
            serves=s.get("serves"),
        )

    def train(self, start: str, rows: list[dict], name: str, sources: list[str]) -> str:
        """Fine-tune ``start`` on ``rows`` (a dataset whose lineage points to ``sources``: the samples, or the
        base for the gold solutions); the adapter (LoRA) or the model."""
        data = put_rows(
            self.store,
            rows,
            name,
            op="make-verified-set",
            config={"checker": self.config.checker, "keep": self.config.keep},
            inputs=sources,
        )
        return finetune(self.store, start, data, self.ft, progress=self.progress)["model"]

    def merged(self, trained: str, name: str) -> str:
        """A trained LoRA adapter folded into its base (the model a continuing round trains on, and, in
        process, the model sampled); a full fine-tune as it is."""
        return merge_adapter(self.store, trained, name=name) if self.ft.method == "lora" else trained


def _sft_gold(lab: _Lab) -> list[dict]:
    """The "human data" baseline: one fine-tune of the base on the program-written gold solutions."""
    lab.log("[self-training] sft_gold")
    rows = [
        {"prompt": prompt_of(p, lab.config.train_shots), "completion": p["solution"]}
        for p in lab.sets["train"]
    ]
    a = lab.train(lab.base, rows, "self-training-gold", [lab.base])
    m = a if lab.remote else lab.merged(a, "self-training-gold")  # an endpoint serves the adapter on its base
    return [{"round": 1, "model": m, "eval": lab.ev(m, "sft_gold")}]


def _chains(config: Config) -> dict[str, tuple[int, bool, range | None]]:
    """arm: (rounds, fine-tune from the base?, draws) — each draw is `samples` per problem with its own seed;
    round r draws with seed r, except compute_matched's one round, which draws with seeds 1..rounds from the
    base: the same distribution as one draw of rounds x samples, and its first draw is rest_em's round-1 draw
    (one step, computed once), so the two arms' kept sets differ only by the extra samples."""
    every = range(1, config.rounds + 1)
    return {
        "rft": (1, True, None),
        "rest_em": (config.rounds, True, None),
        "rest_em_continue": (config.rounds, False, None),
        "compute_matched": (1, True, every),
        "star": (config.rounds, True, None),
    }


def _chain(lab: _Lab, arm: str, rounds: int, from_base: bool, seeds: range | None) -> list[dict]:
    """One arm's rounds: sample from the current model, keep the verified solutions (STaR: rationalize the
    failures), fine-tune (from the base or from the last model), evaluate. A round with nothing verified ends
    the chain."""
    config, out = lab.config, []
    # model: what this round samples from; start: what a continuing round trains on (the last model, merged);
    # chain: the adapters so far (an endpoint serves a continuing chain as one stacked adapter on the base)
    model, start, chain = lab.base, lab.base, []
    for r in range(1, rounds + 1):
        draws = seeds or [r]
        lab.log(
            f"[self-training] {arm} round {r}/{rounds}: {len(draws) * config.samples} samples per problem"
        )
        src = lab.served(model)
        sources, comps = _draw(lab, src, arm, draws)
        rows, kept = verified_set(lab.sets["train"], comps, config.keep, lab.check, config.train_shots)
        if (
            arm == "star"
        ):  # rationalization: the problems with no verified sample, asked again with the answer
            rows, kept = _rationalize(lab, src, arm, r, rows, kept, sources)
        if not rows:
            out.append({"round": r, "model": None, "kept": kept, "eval": None})
            lab.log(f"[self-training] {arm} round {r}: nothing verified; the chain stops")
            break
        name = f"self-training-{arm}-{r}"
        trained = lab.train(
            lab.base if from_base else start,
            [{k: v for k, v in x.items() if k != "steps"} for x in rows],
            name,
            sources,
        )
        chain.append(trained)
        if lab.remote is None:
            model = start = lab.merged(trained, name)
        else:  # the same training as in process (a continuing round trains on the same merged model)
            model = (
                trained
                if from_base or len(chain) == 1
                else stack_adapters(lab.store, chain, name=f"{name}-stacked")
            )
            if not from_base and r < rounds:
                start = lab.merged(trained, name)
        out.append({"round": r, "model": model, "kept": kept, "eval": lab.ev(model, f"{arm}-{r}")})
    return out


def _draw(lab: _Lab, src: dict, arm: str, draws) -> tuple[list[str], list[list[str]]]:
    """``samples`` solutions per train problem for each seed in ``draws``: the sample sets' ids and, per
    problem, the completions of every draw together."""
    config = lab.config
    sources, comps = [], [[] for _ in lab.sets["train"]]
    for seed in draws:
        sid, got = _samples(
            lab.store,
            src["model"],
            lab.sets["train"],
            config.samples,
            config.temperature,
            config,
            f"train-samples-{arm}-{seed}",
            seed=seed,
            progress=lab.progress,
            serves=src.get("serves"),
        )
        sources.append(sid)
        comps = [a + b for a, b in zip(comps, got, strict=True)]
    return sources, comps


def _rationalize(
    lab: _Lab, src: dict, arm: str, r: int, rows: list[dict], kept: dict, sources: list[str]
) -> tuple[list[dict], dict]:
    """STaR's rationalization: the train problems with no verified sample are asked again with their answer as
    a hint; a verified rationale joins the rows with the question alone. Adds the hinted samples to
    ``sources``."""
    config = lab.config
    done = {x["prompt"] for x in rows}
    failed = [p for p in lab.sets["train"] if prompt_of(p, config.train_shots) not in done]
    if not failed:
        return rows, kept
    hid, hinted = _samples(
        lab.store,
        src["model"],
        failed,
        config.samples,
        config.temperature,
        config,
        f"rationalize-{arm}-{r}",
        seed=r,
        progress=lab.progress,
        hint=True,
        serves=src.get("serves"),
    )
    more, rat = verified_set(failed, hinted, config.keep, lab.check, config.train_shots)  # the question alone
    rows = rows + more
    kept = {
        **kept,
        "rationalized_rows": rat["rows"],
        "rationalized_problems": rat["problems_with_any"],
        "rows": len(rows),
        "problems_with_any": kept["problems_with_any"] + rat["problems_with_any"],
    }
    sources.append(hid)
    return rows, kept


def _grpo(lab: _Lab) -> list[dict]:
    """GRPO from the base with the checker as the reward, at ReST-EM's sample budget."""
    from heredity.engine.trl_rl import TRLConfig

    config, sets = lab.config, lab.sets
    budget = config.rounds * config.samples * len(sets["train"])
    tc = TRLConfig(
        steps=max(1, budget // config.grpo_batch),
        lr=config.grpo_lr,
        batch_size=config.grpo_batch,
        num_generations=config.samples,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
    )
    lab.log(
        f"[self-training] grpo: {tc.steps} steps of {tc.batch_size} completions (the ReST-EM sample budget)"
    )
    data = put_rows(
        lab.store,
        [{"prompt": prompt_of(p, config.shots), "answer": p["answer"]} for p in sets["train"]],
        "self-training-problems",
        op="make-dataset",
        inputs=[lab.base],
    )
    m = grpo_verifiable_step(
        lab.store,
        lab.base,
        data,
        config.checker,
        tc,
        name="self-training-grpo",
        stop=[STOP] if config.shots else None,
        progress=lab.progress,
    )["model"]
    return [{"round": 1, "model": m, "completions": tc.steps * tc.batch_size, "eval": lab.ev(m, "grpo")}]


# ---- prompts and problems ----

PROMPT = (
    "Solve the problem. Write one line per step, then the final answer on its own line as '#### N'.\n\n"
    "{examples}Problem: {question}\nSolution:"
)
EXAMPLE = "Problem: {question}\nSolution:\n{solution}\n\n"
# with worked examples a small model goes on to write the next problem: the answer ends there
STOP = "\nProblem:"


def examples(shots: int) -> list[dict]:
    """The few-shot worked examples (fixed: their own seed, one and two steps), never a train or test
    problem."""
    return [p for k in range(shots) for p in make_problems(1, "train", 1 + k % 2, 1, seed=10_000 + k)]


@functools.cache
def _shown(shots: int) -> str:
    """The worked examples as they open every prompt (made once per ``shots``, not once per prompt)."""
    return "".join(EXAMPLE.format(**e) for e in examples(shots))


def prompt_of(problem: dict, shots: int, hint: bool = False) -> str:
    return PROMPT.format(examples=_shown(shots), question=problem["question"]) + (
        HINT.format(answer=problem["answer"]) if hint else ""
    )


HINT = "\n\n(Hint: the final answer is {answer}. Show the steps that lead to it.)"


def answer_problem(checker: str | None) -> Callable[[dict], str | None]:
    """What is wrong with a problem for ``checker`` (None: nothing), found before any model work — the checker
    itself would fail only on the first sample: the default one needs an integer answer, a regex one a pattern
    that compiles with the answer in it (the rule of ``evals.verify.load_checker``). A ``module:function``
    checker is the user's."""
    if checker is None:

        def integer(p: dict) -> str | None:
            a = p.get("answer")
            if isinstance(a, bool) or not (
                isinstance(a, int)
                or (isinstance(a, float) and a.is_integer())
                or (isinstance(a, str) and re.fullmatch(r"\s*-?\d+\s*", a))
            ):
                return (
                    f"'answer' {a!r} is not an integer, which the default checker (the last line '#### N') "
                    "compares; give integer answers, or set checker=regex:PATTERN or checker=module:function"
                )
            return None

        return integer
    if checker.startswith("regex:"):
        pattern = checker[len("regex:") :]

        def compiles(p: dict) -> str | None:
            try:
                re.compile(pattern.replace("{answer}", re.escape(str(p.get("answer")))))
            except re.error as e:
                return (
                    f"checker {checker!r} is not a valid regular expression with this answer ({e.msg} at "
                    "position "
                    f"{e.pos}); fix the pattern"
                )
            return None

        return compiles
    return lambda p: None


def problem_sets(config: Config) -> dict[str, list[dict]]:
    """The train/test/ood problems, each checked against the checker before anything is sampled."""
    bad = answer_problem(config.checker)
    if config.problems_file:
        sets = load_problems(config.problems_file, check=bad)
        if "sft_gold" in config.arms and any(not p.get("solution") for p in sets["train"]):
            raise HeredityError(
                f"{config.problems_file}: the sft_gold arm needs a 'solution' on every train problem; "
                "add them or drop sft_gold from arms"
            )
        return sets
    per = -(-config.train_problems // len(config.levels))
    train = [p for s in config.levels for p in make_problems(per, "train", s, config.digits, config.seed)][
        : config.train_problems
    ]
    sets = {
        "train": train,
        "test": make_problems(config.test_problems, "test", config.test_steps, config.digits, config.seed),
        "ood": make_problems(config.ood_problems, "ood", config.test_steps, config.digits, config.seed),
    }
    shown = {e["question"] for e in examples(config.shots)}
    sets = {
        k: [p for p in v if p["question"] not in shown] for k, v in sets.items()
    }  # a worked example is no problem
    for split, ps in sets.items():
        for i, p in enumerate(ps):
            if problem := bad(p):
                raise HeredityError(f"generated {split} problem {i + 1}: {problem}")
    return sets


def train_subset(train: list[dict], n: int) -> list[dict]:
    """``n`` train problems evenly spaced over the list (which runs level by level), so every level is in
    it."""
    if n >= len(train):
        return train
    return [train[int(i * len(train) / n)] for i in range(n)]


# ---- sampling, verifying, evaluating ----


def _prompts(ps: list[dict], shots: int, hint: bool = False) -> list[str]:
    return [prompt_of(p, shots, hint) for p in ps]


def _samples(
    store: Store,
    model: str,
    ps: list[dict],
    n: int,
    temperature: float,
    config: Config,
    name: str,
    seed: int = 0,
    progress: bool = True,
    hint: bool = False,
    serves: str | None = None,
) -> tuple[str, list[list[str]]]:
    cfg = SampleConfig(
        n=n,
        temperature=temperature,
        seed=seed,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.sample_batch,
        stop=[STOP] if config.shots else [],
    )
    prompts = _prompts(ps, config.shots, hint)
    did = sample_step(store, model, prompts, cfg, name=name, progress=progress, serves=serves)
    rows = read_table(store.path(did)).to_pylist()
    out: list[list[str]] = [[] for _ in ps]
    by_prompt = {p: i for i, p in enumerate(prompts)}
    for r in rows:
        out[by_prompt[r["prompt"]]].append(r["completion"])
    return did, out


def verified_set(
    ps: list[dict], samples: list[list[str]], keep: int, check, shots: int
) -> tuple[list[dict], dict]:
    """At most ``keep`` distinct verified solutions per problem (first come), as fine-tuning rows, and what
    the set holds: problems with any, distinct solutions per problem, share kept per level, mean answer
    length."""
    rows, per_problem, per_level = [], [], Counter()
    for p, comps in zip(ps, samples, strict=True):
        good = list(dict.fromkeys(c.strip() for c in comps if check(p, c)))[:keep]
        per_problem.append(len(good))
        if good:
            per_level[p["steps"]] += 1
        rows += [{"prompt": prompt_of(p, shots), "completion": c, "steps": p["steps"]} for c in good]
    levels = Counter(p["steps"] for p in ps)
    stats = {
        "rows": len(rows),
        "problems_with_any": sum(k > 0 for k in per_problem),
        "problems": len(ps),
        "distinct_per_problem": float(np.mean(per_problem)) if per_problem else 0.0,
        "share_kept_by_level": {str(k): per_level[k] / v for k, v in sorted(levels.items())},
        "mean_answer_chars": float(np.mean([len(r["completion"]) for r in rows])) if rows else None,
    }
    return rows, stats


def evaluate(
    store: Store,
    model: str,
    sets: dict[str, list[dict]],
    config: Config,
    check,
    label: str,
    progress: bool = True,
    serves: str | None = None,
) -> dict:
    """Greedy pass@1 on test, ood and train; sampled pass@k and majority vote on test. ``model`` is what
    sampling names (an ``openai:`` spec at an endpoint, which then ``serves`` that stored model)."""
    from heredity.reports.stats import rate_ci

    out = {}
    for split in ("test", "ood", "train"):
        if not sets[split]:  # a user's file may have no ood split
            continue
        ps = sets[split] if split != "train" else train_subset(sets["train"], config.train_eval)
        _, comps = _samples(
            store, model, ps, 1, 0.0, config, f"greedy-{split}-{label}", progress=progress, serves=serves
        )
        right = [check(p, c[0]) for p, c in zip(ps, comps, strict=True)]
        out[f"greedy_{split}"] = rate_ci(sum(right), len(right))
        out[f"greedy_{split}_items"] = [int(x) for x in right]  # per problem, for the paired comparisons
    _, comps = _samples(
        store,
        model,
        sets["test"],
        config.eval_samples,
        config.temperature,
        config,
        f"eval-test-{label}",
        seed=1,
        progress=progress,
        serves=serves,
    )
    correct = np.array([[check(p, c) for c in cs] for p, cs in zip(sets["test"], comps, strict=True)])
    rng = np.random.default_rng(config.seed)
    for k in config.ks:
        per = np.array([pass_at_k(config.eval_samples, int(c.sum()), k) for c in correct])
        boot = [per[rng.integers(0, len(per), len(per))].mean() for _ in range(2000)]
        out[f"pass@{k}"] = {
            "mean": float(per.mean()),
            "lo": float(np.percentile(boot, 2.5)),
            "hi": float(np.percentile(boot, 97.5)),
            "unit": f"problems, n = {len(per)}",
        }
    out["pass_curve"] = {
        str(k): float(np.mean([pass_at_k(config.eval_samples, int(c.sum()), k) for c in correct]))
        for k in _curve_ks(config.eval_samples)
    }
    out["answer_chars"] = float(np.mean([len(c.strip()) for cs in comps for c in cs])) if comps else None
    votes = []
    for p, cs in zip(sets["test"], comps, strict=True):
        answers = [a for a in (final_answer(c) for c in cs) if a is not None]
        top = Counter(answers).most_common(1)
        votes.append(bool(top) and check(p, f"#### {top[0][0]}"))
    out["majority_vote"] = rate_ci(sum(votes), len(votes))
    return out


def _curve_ks(n: int) -> list[int]:
    """1, 2, 4, … up to n (and n itself): the points of the pass@k curve."""
    return sorted({min(2**i, n) for i in range(n.bit_length() + 1)})


# ---- statistics ----


# The comparisons fixed before the run (a, b): every arm against the base and against fine-tuning on gold
# solutions (the paper's "human data" baseline), ReST-EM's rounds against one round with their samples
# (compute-matched), from-base against continuing, and ReST-EM's last round against its first.
def planned_comparisons(results: dict) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    last = {a: rs[-1]["round"] for a, rs in results.items() if rs and rs[-1].get("eval")}
    pairs = [((a, last[a]), ("base", 0)) for a in last if a != "base"]
    pairs += [
        ((a, last[a]), ("sft_gold", 1)) for a in last if a not in ("base", "sft_gold") and "sft_gold" in last
    ]
    for a, b in (("rest_em", "compute_matched"), ("rest_em", "rest_em_continue"), ("star", "rest_em")):
        if a in last and b in last:
            pairs.append(((a, last[a]), (b, last[b])))
    if "rest_em" in last and last["rest_em"] > 1:
        pairs.append((("rest_em", last["rest_em"]), ("rest_em", 1)))
    return list(dict.fromkeys(pairs))


def compare(results: dict) -> list[dict]:
    """Paired comparisons on greedy test accuracy (the same test problems for every model): the difference
    with Newcombe's paired interval, McNemar's exact two-sided p, Holm across all of them. Unit: test problems
    (one trained model per arm and round — a claim about these models, not about training in general)."""
    from heredity.reports.stats import holm, paired_rate_test

    def items(arm, rnd):
        return next(x for x in results[arm] if x["round"] == rnd)["eval"]["greedy_test_items"]

    rows = []
    for a, b in planned_comparisons(results):
        t = paired_rate_test(items(*a), items(*b), unit="test problems, one model each")
        rows.append({"a": list(a), "b": list(b), "test": t})
    for r, p in zip(rows, holm([r["test"]["p"] for r in rows]), strict=True):
        r["p_holm"] = p
    return rows


def outcome(r: dict) -> str:
    """The headline comparisons in words, as their tests show them (unit: test problems, one model per
    arm)."""
    from heredity.reports.stats import fmt_test, verdict

    base = r["results"]["base"][0]["eval"]["greedy_test"]
    parts = [f"base greedy test accuracy {base['k']}/{base['n']}"]
    for a, b in (
        ("rest_em", "sft_gold"),
        ("rest_em", "base"),
        ("rest_em", "compute_matched"),
        ("sft_gold", "base"),
    ):
        c = _find(r, a, b)
        if c:
            v = verdict(c["test"], expected=1, p=c["p_holm"])["words"]
            parts.append(
                f"{_label(c['a'])} vs {_label(c['b'])}: {v}, {fmt_test(c['test'], 2, p=c['p_holm'])}"
            )
    if len(parts) == 1:
        for arm, rs in r["results"].items():
            if arm != "base" and rs and rs[-1]["eval"] is not None:
                e = rs[-1]["eval"]["greedy_test"]
                parts.append(
                    f"{arm} (round {rs[-1]['round']}) {e['k']}/{e['n']} [{e['lo']:.2f}, {e['hi']:.2f}]"
                )
    return "; ".join(parts)


@op("grpo-verifiable", 1, distributed=True)
def grpo_verifiable_step(
    store,
    policy: str,
    problems: str,
    checker: str | None = None,
    config=None,
    name: str = "grpo-verifiable",
    stop: list[str] | None = None,
    progress=True,
):
    """The ``grpo-verifiable`` op (here, beside its one user, so that the engine imports no evals): GRPO with
    a checker as the reward (1 when ``evals.verify.load_checker(checker)`` accepts the completion, else
    0): ``problems`` is a dataset with ``prompt`` and the fields the checker reads (``answer`` for the
    default). ``stop``: the reward reads each completion up to its first stop string, as sampling with that
    stop would return it (TRL's generation takes no stop strings). A user's ``module:function`` checker is
    keyed by its source (``evals.verify.checker_digest``) beside its name, so an edited checker trains a new
    model; the default checker, ``regex:`` and heredity's own functions keep the key they always had."""
    from heredity.engine.sampling import as_messages
    from heredity.engine.trl_rl import TRLConfig, grpo_train, policy_model
    from heredity.evals.verify import checker_digest
    from heredity.store import read_table

    config = config or TRLConfig()
    if config.batch_size % config.num_generations:
        raise HeredityError(
            f"GRPO batch_size {config.batch_size} must be a multiple of num_generations "
            f"{config.num_generations}"
        )
    policy_id, data_id = policy_model(store, policy), store.resolve_id(problems)
    if "prompt" not in read_table(store.path(data_id)).column_names:
        raise HeredityError(
            f"{data_id} has no prompt column; give a dataset of problems (prompt, answer, ...)"
        )

    stops = list(stop or [])

    def run(ctx):
        from heredity.evals.verify import load_checker

        check = load_checker(checker)
        rows = read_table(store.path(data_id)).to_pylist()

        def reward(prompts, completions, **columns):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            for s_ in stops:
                texts = [t.split(s_, 1)[0] for t in texts]
            return [
                1.0 if check({k: v[i] for k, v in columns.items() if isinstance(v, list)}, t) else 0.0
                for i, t in enumerate(texts)
            ]

        items = [
            {**{k: v for k, v in r.items() if k != "prompt"}, "prompt": as_messages(r["prompt"])}
            for r in rows
        ]
        return grpo_train(
            ctx, store, policy_id, items, reward, config, {"origin": "grpo", "checker": checker}, name
        )

    cfg = {"config": config.model_dump(), "checker": checker, "stop": stops}
    if (digest := checker_digest(checker)) is not None:
        cfg["checker_sha256"] = digest
    return store.run_step("grpo-verifiable", cfg, [policy_id, data_id], run, seed=config.seed)
