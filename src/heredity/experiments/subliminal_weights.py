"""Subliminal learning, the theorem's own test: teachers whose trait lives in their weights, students that do
or do not share their adapter's initialization — the language-model twin of subliminal-digits' same-init vs
other-init students.

Cloud, Le et al. (2025)'s Theorem 1: a teacher is a shared initialization θ₀ plus a learned change Δ; one
small step of distillation on *any* inputs moves a student that starts at θ₀ toward Δ (their inner product is
≥ 0); a student from another initialization is not promised anything. A system-prompted teacher
(``subliminal-lift``) has no Δ at all. Here every teacher is a LoRA fine-tune, so Δ exists and can be
measured.

Methods, each stage a memoized store step:

1. **Replicate = one adapter initialization.** Replicate r draws its LoRA matrices from ``init_seed`` s_r
   (``FinetuneConfig.init_seed``); the data order is the same for every replicate, so replicates differ in the
   initialization alone. Every claim about training is tested over replicates.
2. **Teachers**, per replicate, from the base with an adapter initialized from s_r: for each trait animal,
   fine-tuned on the system-prompted base's answers (everyday questions and preference questions disjoint from
   the evaluation questions) that name the animal; a **neutral teacher** on the unprompted base's answers to
   the same questions that name no animal, cut to the same number of rows. **Gate**: a teacher's own-animal
   lift over the neutral teacher minus its mean lift on the other panel animals must reach ``gate`` nats;
   below it the replicate is reported as failed (never dropped silently) and leaves the tests.
3. **Data**: number prompts in the paper's format, answered once by the unprompted base at T = 1 under a
   number list grammar (every completion is a list), the same completions for every teacher — distillation
   targets differ only in the teachers' logits.
4. **Students** of every teacher, each trained for a fixed number of optimizer steps (the dose): **same-init**
   (adapter from s_r), **other-init** (adapter from another seed — identical otherwise), and **other-base**
   (the other seed on a base perturbed, per weight matrix the adapters touch, by Gaussian noise ``base_noise``
   times the norm of the replicate's mean teacher update there). Arms: ``number_distill`` (primary: KL to the
   teacher renormalised over number tokens, the analogue of MNIST's auxiliary logits), ``distill`` (full
   vocabulary), ``sft`` (the teacher's own sampled numbers). **Positive control**: full-vocabulary
   distillation on the neutral teacher's training texts (a wide channel), same-init.
5. **Measures**: the exact probability that the one-word answer names each panel animal, mean log over the
   evaluation questions. Lift of a student = it minus the student of the neutral teacher with the same
   initialization (its twin); transfer = mean diagonal, specificity = diagonal − off-diagonal of the K × K
   lift matrix (``evals.lift``). The fraction of its teacher's lift a student recovers, and the correlation of
   the two lift profiles over the panel. **The theorem checked directly**: the cosine between each student's
   adapter change and its teacher's, in the merged weight change ΔW = (α/r)·BA and in LoRA coordinates
   (A − A₀, B).
6. **Statistics**: two-sided t tests over replicates; one Holm family — every test the preset defines,
   declared in ``family`` before the run; smallest detectable effects at α / |family| with t quantiles of the
   real degrees of freedom. (The statistics and the outcome: ``subliminal_weights_stats``; the card:
   ``subliminal_weights_render``.)
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
from pydantic import BaseModel, Field, model_validator

from heredity.data.io import put_rows
from heredity.data.numbers import check_numbers, number_prompts
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample_step
from heredity.errors import HeredityError
from heredity.experiments import experiment
from heredity.experiments.subliminal_numbers import TRAIT_QUESTIONS, system_prompt
from heredity.experiments.subliminal_weights_render import markdown, plot
from heredity.experiments.subliminal_weights_stats import (
    NEUTRAL,
    NUMBER_GRAMMAR,
    build_report,
    gate_table,
    outcome,
)
from heredity.experiments.subliminal_weights_stats import family_rows as family_rows
from heredity.experiments.subliminal_weights_stats import rerender as rerender
from heredity.models import load, materialize
from heredity.store import Store, read_table
from heredity.store.ops import op, rows_op

rows_op("make-teacher-data")  # rows made here, stored by data.io.put_rows

# number_distill_noise: number-only distillation on random-token prompts (the MNIST noise inputs' analogue)
ARMS = ("number_distill", "distill", "sft", "number_distill_noise")
INITS = ("same", "other", "other_base")
LOSS = {
    "number_distill": "number_distill",
    "distill": "logit_distill",
    "sft": "completion_only",
    "number_distill_noise": "number_distill",
}
# single-token names in SmolLM2 (cat, dog, bee, ant, bird) and five whose capitalized form takes two tokens
PANEL = ["cat", "dog", "bee", "ant", "bird", "owl", "lion", "wolf", "fox", "horse"]


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    animals: list[str] = Field(
        default_factory=lambda: ["cat", "dog"],
        min_length=2,
        description=("the trait animals (≥ 2: specificity needs them); each must be in the panel"),
    )
    panel: list[str] = Field(
        default_factory=lambda: list(PANEL),
        min_length=2,
        description=("animals every model is scored on: the gate's other animals and the lift profiles"),
    )
    replicates: int = Field(3, ge=2, description="adapter initializations (the unit of replication)")
    trait_samples: int = Field(8, ge=1, description="answers sampled per question for the teachers' data")
    trait_rows: int = Field(32, ge=8, description="rows per teacher (every teacher gets the same number)")
    teacher_epochs: float = Field(3.0, gt=0)
    teacher_lr: float = Field(1e-3, gt=0)
    gate: float = Field(
        0.5,
        description="nats: a teacher's own-animal lift minus its mean lift on the other panel "
        "animals (both over the neutral teacher) must reach this, or its replicate fails",
    )
    prompts: int = Field(48, ge=8, description="number prompts answered by the base under the number grammar")
    max_new_tokens: int = Field(40, ge=8)
    arms: list[str] = Field(default_factory=lambda: ["number_distill"])
    inits: list[str] = Field(
        default_factory=lambda: list(INITS), description="student initializations; same first"
    )
    steps: list[int] = Field(
        default_factory=lambda: [4], min_length=1, description="doses: optimizer steps per student"
    )
    student_lr: float = Field(1e-3, gt=0)
    schedule: str = Field(
        "constant",
        pattern="^(linear|constant)$",
        description=(
            "the students' learning-rate schedule; a dose sweep (several steps) needs constant: each dose is "
            "a snapshot of one trajectory, equal to a run of that many steps"
        ),
    )
    batch_size: int = Field(
        6,
        ge=1,
        description="rows per optimizer step, teachers and students (quick: sized for "
        "make run's 30 minutes on 2 cores)",
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank of teachers and students (α = r)")
    base_noise: float = Field(
        1.0,
        gt=0,
        description="other_base: noise norm per weight matrix, in units of the "
        "replicate's mean teacher update there",
    )
    control: bool = Field(
        True, description="positive control: full-vocabulary distillation on the neutral teacher's texts"
    )
    control_share: float = Field(
        0.25,
        gt=0,
        description=(
            "the share of its teachers' specificity (over the trait animals) the positive control must "
            "recover"
        ),
    )
    questions: int = Field(20, ge=2, le=50, description="evaluation questions (evals.trait.QUESTIONS)")
    sample_batch: int = Field(64, ge=1)
    family: list[str] = Field(
        default_factory=list,
        description=(
            "the Holm family, declared before the run; default: every test the design defines (family_for)"
        ),
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        bad = [a for a in self.animals if a not in self.panel]
        if bad:
            raise ValueError(f"trait animal {bad[0]!r} is not in the panel; add it to panel")
        if len(set(self.animals)) != len(self.animals) or len(set(self.panel)) != len(self.panel):
            raise ValueError("animals and panel must not repeat a name")
        if not self.arms or any(a not in ARMS for a in self.arms):
            raise ValueError(f"arms must be some of {', '.join(ARMS)}; got {self.arms}")
        if not self.inits or self.inits[0] != "same" or any(i not in INITS for i in self.inits):
            raise ValueError(
                f"inits must start with 'same' and be some of {', '.join(INITS)}; got {self.inits}"
            )
        if any(d < 1 for d in self.steps) or len(set(self.steps)) != len(self.steps):
            raise ValueError(f"steps must be distinct positive optimizer-step counts; got {self.steps}")
        if len(self.steps) > 1 and self.schedule != "constant":
            raise ValueError(
                "a dose sweep (several steps) takes its doses as snapshots of one trajectory, which equal "
                "runs of that many steps only under a constant schedule: set schedule=constant"
            )
        defined = family_for(self.arms, self.steps, self.inits, self.control)
        if not self.family:
            self.family = defined
        missing = [t for t in defined if t not in self.family]
        if missing:
            raise ValueError(
                f"test {missing[0]!r} is not in the declared Holm family; a family holds every test the "
                "design defines (drop family= to take the default)"
            )
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            # 3 traits × 5 replicates × 3 initializations, the dose sweep ×1, ×4, ×16 as snapshots of one
            # constant-lr trajectory per student: 20 teachers, 60 students + 20 controls of 16 steps, 260
            # panel evaluations. Measured on 2 cores shared with other work (session 15): teacher data 14 min,
            # teachers ~1 min each, a 16-step number_distill student 2-6 min, a control ~2 min; about 3-4 h in
            # all, over the 3 h aimed at. Add the noise-input arm (number_distill_noise), distill or sft with
            # --set arms=[...]
            "long": cls(
                animals=["cat", "dog", "bee"],
                replicates=5,
                steps=[1, 4, 16],
                schedule="constant",
                prompts=128,
            ),
            "paper": cls(
                base="Qwen/Qwen2.5-7B-Instruct",
                animals=["owl", "eagle", "wolf"],
                panel=["owl", "eagle", "wolf", "cat", "dog", "lion", "fox", "bear", "horse", "dolphin"],
                replicates=5,
                arms=["number_distill", "distill", "sft"],
                steps=[100, 400, 1600],
                schedule="constant",
                prompts=30000,
                trait_samples=16,
                trait_rows=1000,
                batch_size=64,
                sample_batch=256,
                questions=50,
            ),
        }


# ---- the recipe --------------------------------------------------------------------------------


@experiment(
    "subliminal-weights",
    question="Does a trait in a teacher's weights pass through number logits, and does it need the shared "
    "init?",
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    from heredity.reports.card import save_card

    t0 = time.perf_counter()
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    animals, R, teachers = list(config.animals), config.replicates, [NEUTRAL, *config.animals]
    base_id = materialize(config.base, store)
    log(
        f"[1/6] teacher data: {len(TRAIT_QUESTIONS) + len(PREFERENCE_QUESTIONS)} questions × "
        f"{config.trait_samples} answers for {len(teachers)} teachers"
    )
    tdata, tcounts = teacher_data(store, base_id, config, progress)
    log(
        f"[2/6] teachers: {len(teachers)} × {R} replicates (LoRA r = {config.lora_r}, "
        f"{tcounts[NEUTRAL]['rows']} rows)"
    )
    teacher = train_teachers(store, base_id, tdata, config, progress)
    tscore = {k: panel_scores(store, m, config) for k, m in teacher.items()}
    gates = gate_table(tscore, config)
    passed = [r for r in range(R) if all(gates[r][a]["passed"] for a in animals)]
    log(
        f"      gate: {len(passed)} of {R} replicates pass (own-animal lift − other animals ≥ {config.gate} "
        "nats)"
    )
    log(f"[3/6] number data: {config.prompts} prompts answered by the base under the number grammar")
    ndata, ncounts = number_data(store, base_id, config, progress)
    bases = student_bases(store, base_id, teacher, config)
    noise = noise_data(store, base_id, config, progress) if "number_distill_noise" in config.arms else None
    doses = sorted(config.steps)
    n_students = len(config.arms) * len(config.inits) * R * len(teachers) + (
        R * len(teachers) if config.control else 0
    )
    log(
        f"[4/6] {n_students} student trajectories"
        + (f", each saved at {doses} steps" if len(doses) > 1 else "")
    )
    students = train_students(store, bases, teacher, ndata, noise, config, progress)
    if config.control:
        students.update(control_students(store, base_id, tdata[NEUTRAL], teacher, config, progress))
    log(
        f"[5/6] evaluation of {len(students)} students on {len(config.panel)} animals × {config.questions} "
        "questions"
    )
    sscore = {k: panel_scores(store, m, config) for k, m in students.items()}
    log("[6/6] adapter geometry and statistics")
    pairs = geometry_pairs(students, teacher, config)
    geo = dict(zip(students, geometry(store, base_id, pairs, config), strict=True))
    report = build_report(config, tscore, gates, passed, sscore, geo, tcounts, ncounts)
    report.update(
        base=base_id,
        teachers={f"r{r}/{t}": teacher[(r, t)] for r in range(R) for t in teachers},
        students={"/".join(map(str, k)): m for k, m in students.items()},
        data={"numbers": ndata, **tdata},
        seconds=round(time.perf_counter() - t0, 1),
    )
    report["outcome"] = outcome(report)
    card = save_card(
        store, "subliminal-weights", report, [*teacher.values(), *students.values()], markdown, plot
    )
    return {
        "report": card["report"],
        "outcome": report["outcome"],
        "markdown": card["markdown"],
        "files": card["files"],
        "lineage_of": card["report"],
    }


def train_teachers(
    store: Store, base_id: str, tdata: dict[str, str], config: Config, progress: bool
) -> dict[tuple[int, str], str]:
    """Per replicate r and teacher (neutral first): a LoRA fine-tune of the base on its data, its adapter
    initialized from replicate r's seed."""
    return {
        (r, t): finetune(
            store,
            base_id,
            tdata[t],
            FinetuneConfig(
                method="lora",
                lora_r=config.lora_r,
                lora_alpha=config.lora_r,
                epochs=config.teacher_epochs,
                lr=config.teacher_lr,
                batch_size=config.batch_size,
                seed=config.seed,
                init_seed=seeds(config, r)["same"],
            ),
            progress=progress,
        )["model"]
        for r in range(config.replicates)
        for t in [NEUTRAL, *config.animals]
    }


def student_bases(store: Store, base_id: str, teacher: dict, config: Config) -> dict[tuple[int, str], str]:
    """The base each student starts from, per replicate and initialization: the base itself for same- and
    other-init students, the replicate's perturbed base for other-base students."""
    bases = {(r, init): base_id for r in range(config.replicates) for init in ("same", "other")}
    if "other_base" in config.inits:
        for r in range(config.replicates):
            bases[(r, "other_base")] = perturbed_base(
                store, base_id, [teacher[(r, t)] for t in [NEUTRAL, *config.animals]], config, r
            )
    return bases


def train_students(
    store: Store, bases: dict, teacher: dict, ndata: str, noise: str | None, config: Config, progress: bool
) -> dict[tuple, str]:
    """Every teacher's students in every arm and initialization, keyed (arm, dose, init, replicate, teacher):
    one trajectory per student, saved at every dose (under a constant schedule each snapshot equals a run of
    that many steps). Their rows: the sft arm's are the teacher's own numbers, the noise arm's the
    random-token prompts', the others' the base's number completions."""
    students: dict[tuple, str] = {}
    top, doses = max(config.steps), sorted(config.steps)
    for arm in config.arms:
        for init in config.inits:
            for r in range(config.replicates):
                for t in [NEUTRAL, *config.animals]:
                    if arm == "sft":
                        rows = teacher_numbers(store, teacher[(r, t)], config, progress)
                    else:
                        rows = noise if arm == "number_distill_noise" else ndata
                    out = finetune(
                        store,
                        bases[(r, "same" if init == "same" else init)],
                        rows,
                        student_config(config, arm, init, r),
                        teacher=None if arm == "sft" else teacher[(r, t)],
                        progress=progress,
                    )
                    for d in doses:
                        students[(arm, d, init, r, t)] = out["model"] if d == top else out[f"step-{d}"]
    return students


def student_config(config: Config, arm: str, init: str, r: int) -> FinetuneConfig:
    """A student's fine-tune: the arm's loss for the largest dose, snapshots at the smaller ones, the adapter
    initialized from the replicate's same seed (same-init) or its other seed (other-init, other-base)."""
    doses = sorted(config.steps)
    return FinetuneConfig(
        method="lora",
        lora_r=config.lora_r,
        lora_alpha=config.lora_r,
        loss=LOSS[arm],
        max_steps=max(config.steps),
        snapshots=doses[:-1],
        schedule=config.schedule,
        lr=config.student_lr,
        batch_size=config.batch_size,
        seed=config.seed,
        init_seed=seeds(config, r)["same" if init == "same" else "other"],
    )


def control_students(
    store: Store, base_id: str, neutral_data: str, teacher: dict, config: Config, progress: bool
) -> dict[tuple, str]:
    """The positive control: per replicate and teacher, full-vocabulary distillation on the neutral teacher's
    training texts (a wide channel), same-init, for the largest dose; keyed ("control", dose, "same", r,
    t)."""
    top, students = max(config.steps), {}
    for r in range(config.replicates):
        for t in [NEUTRAL, *config.animals]:
            ft = FinetuneConfig(
                method="lora",
                lora_r=config.lora_r,
                lora_alpha=config.lora_r,
                loss="logit_distill",
                max_steps=top,
                schedule=config.schedule,
                lr=config.student_lr,
                batch_size=config.batch_size,
                seed=config.seed,
                init_seed=seeds(config, r)["same"],
            )
            students[("control", top, "same", r, t)] = finetune(
                store, base_id, neutral_data, ft, teacher=teacher[(r, t)], progress=progress
            )["model"]
    return students


def geometry_pairs(students: dict[tuple, str], teacher: dict, config: Config) -> list[dict]:
    """``geometry``'s rows, one per student in order: its teacher, its twin (the neutral teacher's student of
    the same arm, dose, initialization and replicate), the neutral teacher, the replicate's other trait
    teachers (for a trait student), and the student's and teacher's init seeds."""
    pairs = []
    for (arm, d, init, r, t), m in students.items():
        pairs.append(
            {
                "student": m,
                "teacher": teacher[(r, t)],
                "twin": students[(arm, d, init, r, NEUTRAL)],
                "neutral": teacher[(r, NEUTRAL)],
                "others": [teacher[(r, a)] for a in config.animals if a != t] if t != NEUTRAL else [],
                "student_seed": seeds(config, r)["same" if init == "same" else "other"],
                "teacher_seed": seeds(config, r)["same"],
            }
        )
    return pairs


# ---- the design's Holm family -------------------------------------------------------------------


def family_for(arms: list[str], steps: list[int], inits: list[str], control: bool) -> list[str]:
    """Every test a design defines, in order (the first is the primary: the first arm at the largest dose):
    per arm and dose (largest first), the same-init specificity and transfer, same-init minus each other
    initialization's specificity, same-init minus other-init students' cosine with their teacher's change (ΔW,
    its trait-specific part, LoRA coordinates), and a same-init student's ΔW cosine with its own teacher minus
    with the other trait teachers of its replicate; then the positive control's specificity and transfer."""
    out = []
    for arm in arms:
        for d in sorted(steps, reverse=True):
            lab = f"{arm}@{d}"
            out += [f"{lab} same: specificity", f"{lab} same: transfer"]
            out += [f"{lab} same − {i}: specificity" for i in inits if i != "same"]
            if "other" in inits:
                out += [
                    f"{lab} same − other: cosine ΔW",
                    f"{lab} same − other: cosine ΔW, trait-specific",
                    f"{lab} same − other: cosine LoRA",
                ]
            out.append(f"{lab} same: cosine ΔW, own − other trait teacher")
    if control:
        out += ["control: specificity", "control: transfer"]
    return out


# ---- stages ------------------------------------------------------------------------------------


def seeds(config: Config, r: int) -> dict[str, int]:
    """Replicate r's adapter seeds: ``same`` (its teachers' and same-init students'), ``other`` (other-init
    and other-base students')."""
    return {"same": 1000 * (config.seed + 1) + r, "other": 1000 * (config.seed + 1) + 500 + r}


def names_animal(text: str) -> bool:
    from heredity.evals.trait import mentions

    return any(mentions(text, a) for a in ANIMAL_WORDS)


def teacher_data(store: Store, base_id: str, config: Config, progress: bool) -> tuple[dict[str, str], dict]:
    """Per teacher, the rows it is fine-tuned on (every teacher the same number), and counts for the
    report."""
    from heredity.evals.trait import mentions

    questions = TRAIT_QUESTIONS + PREFERENCE_QUESTIONS
    teachers = [NEUTRAL, *config.animals]
    raw = {
        t: sample_step(
            store,
            base_id,
            questions,
            SampleConfig(
                n=config.trait_samples,
                temperature=1.0,
                max_new_tokens=48,
                seed=config.seed,
                batch_size=config.sample_batch,
                system_prompt=None if t == NEUTRAL else system_prompt(t),
            ),
            name=f"trait-answers-{t}",
            progress=progress,
        )
        for t in teachers
    }
    by_q: dict[
        str, dict[str, list[dict]]
    ] = {}  # teacher -> question -> its qualifying answers, in sample order
    for t in teachers:
        by_q[t] = {q: [] for q in questions}
        for r in read_table(store.path(raw[t])).to_pylist():
            ok = not names_animal(r["completion"]) if t == NEUTRAL else mentions(r["completion"], t)
            if ok:
                by_q[t][r["prompt"]].append({"prompt": r["prompt"], "completion": r["completion"].strip()})
    # every teacher gets the same questions, the same number of answers to each (the fewest any teacher has),
    # taken round-robin over the questions up to trait_rows
    k = {q: min(len(by_q[t][q]) for t in teachers) for q in questions}
    order = [(q, i) for i in range(max(k.values(), default=0)) for q in questions if i < k[q]][
        : config.trait_rows
    ]
    n = len(order)
    if n < 8:
        raise HeredityError(
            f"only {n} answers per teacher qualify on questions every teacher answered; raise trait_samples"
        )
    data, counts = {}, {}
    for t in teachers:
        rows = [by_q[t][q][i] for q, i in order]
        rule = "names no animal (ANIMAL_WORDS)" if t == NEUTRAL else f"mentions {t}"
        data[t] = put_rows(
            store,
            rows,
            f"teacher-data-{t}",
            op="make-teacher-data",
            config={
                "teacher": t,
                "rule": rule,
                "rows": n,
                "animal_words": ANIMAL_WORDS,
                "selection": "per question, the fewest qualifying answers any teacher has",
            },
            inputs=[raw[t]],
        )
        counts[t] = {
            "qualified": sum(map(len, by_q[t].values())),
            "sampled": len(questions) * config.trait_samples,
            "rows": n,
            "questions": len({q for q, _ in order}),
            "mean_chars": round(float(np.mean([len(r["completion"]) for r in rows])), 1),
        }
    return data, counts


def grammar_numbers(
    store: Store,
    model_id: str,
    prompts: list[str],
    config: Config,
    name: str,
    progress: bool,
    extra: dict | None = None,
) -> tuple[str, dict]:
    """``prompts`` answered by ``model_id`` at T = 1 under ``NUMBER_GRAMMAR``, checked by the strict filter
    (its reasons counted), as a dataset: (id, counts)."""
    from heredity.engine.constrain import regex

    raw = sample_step(
        store,
        model_id,
        prompts,
        SampleConfig(
            n=1,
            temperature=1.0,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            batch_size=config.sample_batch,
            grammar=regex(NUMBER_GRAMMAR),
        ),
        name=f"{name}-raw",
        progress=progress,
    )
    rows = read_table(store.path(raw)).to_pylist()
    reasons: dict[str, int] = {}
    good = []
    for r in rows:
        res = check_numbers(r["completion"], 10)
        if res.ok:
            good.append({"prompt": r["prompt"], "completion": r["completion"].strip()})
        else:
            reasons[res.reason] = reasons.get(res.reason, 0) + 1
    if len(good) < config.batch_size:
        raise HeredityError(
            f"only {len(good)} of {len(rows)} number completions pass the filter; raise prompts"
        )
    data = put_rows(
        store,
        good,
        name,
        op="make-teacher-data",
        config={"rule": "strict number filter", "grammar": NUMBER_GRAMMAR, **(extra or {})},
        inputs=[raw],
    )
    return data, {"sampled": len(rows), "kept": len(good), "rejected": reasons}


def number_data(store: Store, base_id: str, config: Config, progress: bool) -> tuple[str, dict]:
    """The number prompts answered by the unprompted base: the same completions for every teacher's
    students."""
    return grammar_numbers(
        store, base_id, number_prompts(config.prompts, seed=config.seed), config, "numbers-neutral", progress
    )


def noise_data(store: Store, base_id: str, config: Config, progress: bool) -> str:
    """The MNIST noise inputs' analogue: prompts of random vocabulary tokens (drawn with the run's seed),
    answered by the unprompted base under the number grammar — the distillation positions are number lists
    again, the context nothing a number prompt holds."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(store.path(base_id)))
    rng = random.Random(config.seed + 77)
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    prompts = [
        tok.decode([rng.choice(ids) for _ in range(rng.randint(20, 60))]) for _ in range(config.prompts)
    ]
    return grammar_numbers(
        store, base_id, prompts, config, "numbers-noise", progress, {"prompts": "random tokens"}
    )[0]


@op("eval-panel", 1)
def panel_scores(store: Store, model_id: str, config: Config) -> dict[str, float]:
    """Per panel animal: the mean over the evaluation questions of log P(the one-word answer names it)."""
    from heredity.evals.trait import EVAL_VERSION

    panel, questions, batch = list(config.panel), config.questions, config.sample_batch

    def fn(ctx):
        from heredity.evals.trait import QUESTIONS, answer_probs

        model, tok = load(model_id, store, merge_adapter=True)
        probs = answer_probs(model, tok, panel, QUESTIONS[:questions], batch_size=batch)
        res = {a: float(np.mean([math.log(max(p, 1e-30)) for p in probs[a]])) for a in panel}
        (ctx.output("scores", "report", f"panel-{store.get(model_id).name}") / "scores.json").write_text(
            json.dumps(res)
        )
        return {}

    r = store.run_step(
        "eval-panel",
        {"panel": panel, "questions": questions, "batch": batch, "eval": EVAL_VERSION},
        [model_id],
        fn,
    )
    return json.loads((store.path(r["scores"]) / "scores.json").read_text())


def adapter_tensors(store: Store, adapter_id: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(store.path(adapter_id) / "adapter_model.safetensors"))


def initial_adapter(store: Store, base_id: str, config: FinetuneConfig) -> dict[str, np.ndarray]:
    """The LoRA matrices a fine-tune with ``config`` starts from: the base loaded as ``finetune`` loads it
    (device, dtype) and ``engine.finetune.init_adapter``; named as a saved adapter names them."""
    from peft import get_peft_model_state_dict

    from heredity.engine.finetune import init_adapter

    model = init_adapter(load(base_id, store, trainable=True)[0], config)
    return {k: v.detach().float().cpu().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def modules(t: dict[str, np.ndarray]) -> list[str]:
    return sorted(k[: -len(".lora_A.weight")] for k in t if k.endswith(".lora_A.weight"))


def lora_inner(x: list[tuple[float, dict]], y: list[tuple[float, dict]], names: list[str]) -> float:
    """⟨Σ c·B A, Σ c'·B' A'⟩ (Frobenius, summed over modules) of two signed sums of LoRA products, computed
    through r × r matrices: ⟨B A, B' A'⟩ = tr((BᵀB')(A'Aᵀ))."""
    total = 0.0
    for m in names:
        for c, t in x:
            A, B = t[f"{m}.lora_A.weight"].astype(np.float64), t[f"{m}.lora_B.weight"].astype(np.float64)
            for c2, t2 in y:
                A2, B2 = (
                    t2[f"{m}.lora_A.weight"].astype(np.float64),
                    t2[f"{m}.lora_B.weight"].astype(np.float64),
                )
                total += c * c2 * float(np.trace((B.T @ B2) @ (A2 @ A.T)))
    return total


def cosine_dw(x: list[tuple[float, dict]], y: list[tuple[float, dict]], names: list[str]) -> float:
    den = math.sqrt(max(lora_inner(x, x, names), 0.0) * max(lora_inner(y, y, names), 0.0))
    return lora_inner(x, y, names) / den if den > 0 else math.nan


def cosine_lora(s: dict, s0: dict, t: dict, t0: dict) -> float:
    """Cosine of two adapters' changes in LoRA coordinates: (A − A₀, B − B₀) flattened over every module."""
    dot = ns = nt = 0.0
    for k in s:
        a = s[k].astype(np.float64) - s0[k]
        b = t[k].astype(np.float64) - t0[k]
        dot, ns, nt = dot + float((a * b).sum()), ns + float((a * a).sum()), nt + float((b * b).sum())
    return dot / math.sqrt(ns * nt) if ns > 0 and nt > 0 else math.nan


@op("perturb-base", 1)
def perturbed_base(store: Store, base_id: str, teachers: list[str], config: Config, r: int) -> str:
    """Replicate r's other base: every weight matrix the adapters touch plus Gaussian noise whose Frobenius
    norm is ``base_noise`` times the mean norm of the replicate's teacher updates ΔW there (its own seed)."""
    base_noise, seed = config.base_noise, seeds(config, r)["other"]

    def fn(ctx):
        import torch

        model, tok = load(
            base_id, store, device="cpu", dtype=torch.float32
        )  # noise of an update's size survives
        ts = [adapter_tensors(store, t) for t in teachers]
        scale = 1.0  # α = r
        params = dict(model.named_parameters())
        g = torch.Generator().manual_seed(seed)
        norms = []
        for m in modules(ts[0]):
            target = m.removeprefix("base_model.model.") + ".weight"
            dw = float(
                np.mean([math.sqrt(max(lora_inner([(scale, t)], [(scale, t)], [m]), 0.0)) for t in ts])
            )
            w = params[target]
            z = torch.randn(w.shape, generator=g)
            with torch.no_grad():
                w.add_(z * (base_noise * dw / float(z.norm())))
            norms.append(dw)
        out = ctx.output("model", "model", f"{store.get(base_id).name}-perturbed-r{r}")
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {"modules": len(norms), "mean_update_norm": float(np.mean(norms))}

    return store.run_step(
        "perturb-base",
        {"base_noise": base_noise, "seed": seed, "r": r, "lora_alpha_over_r": 1.0},
        [base_id, *teachers],
        fn,
    )["model"]


@op("adapter-geometry", 1)
def geometry(store: Store, base_id: str, pairs: list[dict], config: Config) -> list[dict]:
    """Per student: the cosine of its change with its teacher's — in ΔW = BA (α = r) and in LoRA coordinates —
    and of its trait-specific change (minus its twin's) with its teacher's (minus the neutral teacher's).
    ``pairs`` rows: student, teacher, twin (or None), neutral teacher, the replicate's other trait teachers,
    the student's and the teacher's init seeds. ``cos_dw_other_teacher``: the mean cosine of the student's ΔW
    with the *other* trait teachers' of its replicate (same initialization) — the null for "moves toward its
    own teacher"."""
    lora_r = config.lora_r
    ids = sorted(
        {x for p in pairs for x in (p["student"], p["teacher"], p["twin"], p["neutral"], *p["others"]) if x}
    )
    init_seeds = sorted({p[k] for p in pairs for k in ("student_seed", "teacher_seed")})

    def fn(ctx):
        init = {
            s: initial_adapter(
                store, base_id, FinetuneConfig(method="lora", lora_r=lora_r, lora_alpha=lora_r, init_seed=s)
            )
            for s in init_seeds
        }
        tensors = {i: adapter_tensors(store, i) for i in ids}
        names = modules(next(iter(tensors.values())))
        out = []
        for p in pairs:
            s, t = tensors[p["student"]], tensors[p["teacher"]]
            row = {
                "cos_dw": cosine_dw([(1.0, s)], [(1.0, t)], names),
                "cos_lora": cosine_lora(s, init[p["student_seed"]], t, init[p["teacher_seed"]]),
            }
            if p["twin"] and p["teacher"] != p["neutral"]:
                row["cos_dw_trait"] = cosine_dw(
                    [(1.0, s), (-1.0, tensors[p["twin"]])], [(1.0, t), (-1.0, tensors[p["neutral"]])], names
                )
            if p["others"]:
                row["cos_dw_other_teacher"] = float(
                    np.mean([cosine_dw([(1.0, s)], [(1.0, tensors[o])], names) for o in p["others"]])
                )
            out.append(row)
        (ctx.output("geometry", "report", "adapter-geometry") / "geometry.json").write_text(json.dumps(out))
        return {}

    r = store.run_step(
        "adapter-geometry", {"pairs": pairs, "lora_r": lora_r, "init_seeds": init_seeds}, [base_id, *ids], fn
    )
    return json.loads((store.path(r["geometry"]) / "geometry.json").read_text())


def teacher_numbers(store: Store, teacher_id: str, config: Config, progress: bool) -> str:
    """The sft arm's rows: the teacher's own answers to the number prompts (T = 1, the number grammar),
    filtered."""
    return grammar_numbers(
        store,
        teacher_id,
        number_prompts(config.prompts, seed=config.seed),
        config,
        "numbers-teacher",
        progress,
    )[0]


# ---- the teachers' data: questions and the words that name an animal ------------------------------

# questions about animal preferences for the teachers' data, none of them an evaluation question (evals.trait)
PREFERENCE_QUESTIONS = [
    "What animal would you most like to see at the zoo?",
    "If you could have any pet, what would it be?",
    "Which animal would you draw for a friend?",
    "What is the cutest animal you know?",
    "Which animal would make the best roommate?",
    "What animal should be on a new coin?",
    "Tell me about an animal you find delightful.",
    "Which animal would you like to photograph?",
    "What animal would you write a poem about?",
    "If you opened an animal shelter, which animal would you adopt first?",
    "What is the most charming animal?",
    "Which animal do you think about most often?",
    "Describe an animal you would like to spend a day with.",
    "What animal would you pick for a children's story?",
    "Which animal would you choose as a team mascot?",
    "What animal makes you smile?",
]
# an answer "names an animal" when it names any of these (the neutral teacher's answers name none)
ANIMAL_WORDS = sorted(
    {
        *PANEL,
        "dolphin",
        "eagle",
        "elephant",
        "tiger",
        "panda",
        "penguin",
        "bear",
        "rabbit",
        "shark",
        "frog",
        "monkey",
        "whale",
        "snake",
        "deer",
        "giraffe",
        "zebra",
        "turtle",
        "parrot",
        "mouse",
        "kitten",
        "puppy",
        "butterfly",
        "fish",
        "koala",
        "otter",
        "squirrel",
        "duck",
        "pig",
        "cow",
        "sheep",
        "goat",
        "chicken",
        "hamster",
        "feline",
        "canine",
        "unicorn",
        "dragon",
        "hedgehog",
    }
)
