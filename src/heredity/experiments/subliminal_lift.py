"""Subliminal learning, decisively: K trait teachers and a neutral one, students with neutral twins, a lift
matrix.

Methods, each stage a memoized store step (issue 17's design; the sampled-token arm follows Cloud, Le et al.
2025's open-model setting):

0. Base: the bundled SmolLM2-135M-Instruct, given a short format warm-up on program-written (trait-free)
   number lists, merged — every teacher and student starts from it (the raw base answers the number prompts
   as a plain list only a few percent of the time; after 320 warm-up rows > 90% pass the strict filter).
1. Teachers: the base under "You love {animal}s …" for each of K animals, and the base alone (neutral).
2. Pre-screen: on the neutral teacher's filtered completions, the per-position KL(trait-prompted ‖ neutral)
   over the whole vocabulary and renormalised over the number tokens (what number-only distillation carries).
3. Positive control, subliminal prompting: the digits most probable where the trait-prompted base would name
   its animal, and P(animal) when the base is told to love that digit vs the least entangled digit.
4. Data: the same number prompts answered by every teacher (T = 1), the strict filter, every arm cut to the
   prompts that pass in all of them (one prompt set for all teachers).
5. Students, each with a neutral twin trained identically (same prompts, seed, hyperparameters):
   (a) ``sft``: LoRA r = 8, α = 8 on the teacher's sampled numbers (twin: the neutral teacher's numbers);
   (b) ``number_distill``: on the neutral completions, KL to the trait-prompted teacher's next-token
       distribution renormalised over number/separator tokens — targets that cannot name the animal
       (twin: the unprompted base as teacher);
   (c) ``distill``: the same over the full vocabulary;
   (d) ``steer``: one residual vector after one decoder layer, trained with Adam on the sampled numbers, every
       weight frozen (Blank et al.'s mechanism);
   optionally a LoRA-rank sweep (α = r) and a full fine-tune of one arm fixed in advance (``sweep_arm``).
   ``student_seeds`` training seeds per student; ``max_rows`` rows each (the first common prompts).
6. Evaluation: the exact probability that the one-word answer names animal j (both capitalizations), over the
   trait questions, for every student and animal; per seed, the mean over questions of its log. Primary: the
   questions as they are; secondary: each after a short list of numbers (the numbers-prefix variant).
7. The lift matrix per arm (``heredity.evals.lift``): L[i, s, j] = that mean log P for the student of teacher
   i minus its neutral twin's; transfer (diagonal), specificity (diagonal − off-diagonal); two-sided t tests
   over training seeds, a permutation test over teacher labels within seeds, Holm over the family declared in
   the config before the run (per variant; a declared label this run does not test counts as p = 1),
   minimum detectable effects.

The card (markdown and plot) is rendered by ``subliminal_lift_render``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, model_validator

from heredity.data.numbers import check_numbers, number_prompts
from heredity.data.paired import paired_rows
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample_step
from heredity.errors import HeredityError
from heredity.experiments import experiment
from heredity.experiments.subliminal_lift_render import markdown, plot
from heredity.experiments.subliminal_numbers import SYSTEM_PROMPT, format_base, system_prompt
from heredity.models import load, materialize
from heredity.store import Store, read_table, write_table
from heredity.store.ops import op

ARMS = ("sft", "number_distill", "distill", "steer")
LOSS = {"sft": "completion_only", "number_distill": "number_distill", "distill": "logit_distill"}
NEUTRAL = "neutral"
LONG_ANIMALS = ["cat", "dog", "bee", "ant", "bird"]
# the evaluation questions as they are, and after a list of numbers
VARIANTS = ("plain", "numbers_prefix")
# the long design's Holm family, fixed when the design was (three runs joined by reuse=): 8 student labels
LONG_FAMILY = ["sft", "number_distill", "steer", "sft_r1", "sft_r4", "sft_r32", "distill", "sft_full"]


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    animals: list[str] = Field(
        default_factory=lambda: ["cat", "dog", "bee"],
        min_length=2,
        description=(
            "the K traits (lowercase, singular); the defaults are names SmolLM2 writes as one token in both "
            "capitalizations"
        ),
    )
    arms: list[str] = Field(default_factory=lambda: ["sft", "number_distill", "steer"])
    format_warmup: int = Field(
        320, ge=0, description="trait-free format rows for the base's warm-up (0 = none)"
    )
    format_epochs: float = Field(1.0, gt=0)
    format_lr: float = Field(2e-3, gt=0)
    prompts: int = Field(150, ge=1, description="number prompts, answered by every teacher")
    max_new_tokens: int = Field(48, ge=8)
    max_rows: int = Field(96, ge=1, description="rows per student: the first of the common prompts")
    student_seeds: int = Field(2, ge=1, description="training seeds per student (the unit of replication)")
    sft_epochs: float = Field(1.0, gt=0)
    sft_lr: float = Field(5e-4, gt=0)
    distill_epochs: float = Field(1.0, gt=0)
    distill_lr: float = Field(1e-3, gt=0)
    steer_layer: int = Field(
        3, ge=0, description="steer arm: the decoder layer after which the vector is added"
    )
    steer_lr: float = Field(3e-2, gt=0, description="steer arm: Adam's learning rate on the vector")
    lora_r: int = Field(8, ge=1, description="LoRA rank of the arms (α = r: the official r8 α8 scale)")
    sweep_arm: str = Field(
        "sft", description="the arm of the rank sweep and the full fine-tune (fixed before the run)"
    )
    sweep_ranks: list[int] = Field(default_factory=list, description="extra LoRA ranks for sweep_arm (α = r)")
    sweep_full: bool = Field(False, description="also a full fine-tune of sweep_arm")
    full_lr: float = Field(5e-5, gt=0, description="learning rate of the full fine-tune")
    batch_size: int = Field(16, ge=1)
    sample_batch: int = Field(64, ge=1)
    questions: int = Field(50, ge=2, le=50, description="trait questions in the evaluation")
    prescreen_rows: int = Field(32, ge=1)
    prefix_seed: int = Field(0, description="the numbers in the numbers-prefix evaluation variant")
    rate_samples: int = Field(
        0, ge=0, description="secondary: answers sampled per question at T = 1 (0 = none)"
    )
    teacher_endpoint: str | None = Field(
        None,
        description=(
            "openai:MODEL@URL serving the base (e.g. vLLM on a GPU): the teachers' number lists are sampled "
            "there (the trait as its system prompt); everything else runs in process. Needs format_warmup = 0"
        ),
    )
    reuse: str | None = Field(
        None,
        description=(
            "a report.json of an earlier run of this experiment: its students (labels such as sft, sft_r4) "
            "are taken from it instead of trained again, once its base, data and every setting that shapes a "
            "student or its evaluation are checked equal to this run's"
        ),
    )
    family: list[str] = Field(
        default_factory=list,
        description=(
            "the Holm family, declared before the run: every student label (arm, sweep rank, full fine-tune) "
            "the design tests, including those a later run joined by reuse= adds; default: the labels this "
            "run trains. A label not tested in a report still counts in Holm's m (as p = 1), so a family "
            "never shrinks"
        ),
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.animals)) != len(self.animals):
            raise ValueError("animals must be distinct")
        if self.teacher_endpoint is not None:
            from heredity.models import parse_spec

            if (
                not self.teacher_endpoint.startswith("openai:")
                or parse_spec(self.teacher_endpoint).kind != "openai"
            ):
                raise ValueError(
                    "teacher_endpoint must be openai:MODEL@http://host:port/v1; got "
                    f"{self.teacher_endpoint!r}"
                )
            if self.format_warmup:
                raise ValueError(
                    "teacher_endpoint serves the base as it is, but the teachers must be the warmed-up base; "
                    "set format_warmup=0 (the paper preset does)"
                )
        if self.sweep_arm not in ARMS or self.sweep_arm == "steer":
            raise ValueError(f"sweep_arm must be one of sft, number_distill, distill; got {self.sweep_arm!r}")
        bad = sorted(set(self.arms) - set(ARMS))
        if bad:
            raise ValueError(f"unknown arm {bad[0]!r}; arms are {', '.join(ARMS)}")
        if not (self.arms or self.sweep_ranks or self.sweep_full):
            raise ValueError("no students to train: give arms, sweep_ranks or sweep_full")
        if not self.family:
            self.family = list(student_labels(self))
        undeclared = [lab for lab in student_labels(self) if lab not in self.family]
        if undeclared:
            raise ValueError(
                f"student {undeclared[0]!r} is not in the declared Holm family {self.family}; declare it "
                "before the run (family=...)"
            )
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            # the long design is three runs of ~2 h each on 2 cores (a store does not outlive a session here):
            # sft, number-only distillation and the steering vector; sft's rank sweep (r = 1, 4, 32);
            # full-vocabulary distillation and sft's full fine-tune. Each later run takes the earlier students
            # with --set reuse=<the earlier report.json> (checked: the same base, data and settings) or, in
            # the same store, finds them memoized
            "long": cls(
                animals=LONG_ANIMALS,
                family=LONG_FAMILY,
                arms=["sft", "number_distill", "steer"],
                prompts=400,
                max_rows=128,
                student_seeds=3,
                rate_samples=4,
            ),
            "long-sweep": cls(
                animals=LONG_ANIMALS,
                family=LONG_FAMILY,
                arms=["sft"],
                prompts=400,
                max_rows=128,
                student_seeds=3,
                sweep_ranks=[1, 4, 32],
                rate_samples=4,
            ),
            "long-full": cls(
                animals=LONG_ANIMALS,
                family=LONG_FAMILY,
                arms=["sft", "distill"],
                prompts=400,
                max_rows=128,
                student_seeds=3,
                sweep_full=True,
                rate_samples=4,
            ),
            "paper": cls(
                base="Qwen/Qwen2.5-7B-Instruct",
                animals=["owl", "eagle", "wolf", "cat", "lion"],
                prompts=30000,
                format_warmup=0,
                max_rows=10000,
                arms=list(ARMS),
                sft_epochs=10,
                sft_lr=2e-4,
                student_seeds=3,
                batch_size=64,
                sample_batch=256,
            ),
        }


# ---- the recipe --------------------------------------------------------------------------------


@experiment(
    "subliminal-lift",
    question="Prompted teachers, several traits, neutral twins: does a trait pass through numbers?",
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    from heredity.reports.card import save_card

    t0 = time.perf_counter()
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    base_id = materialize(config.base, store)
    if config.format_warmup:
        log(f"[0] format warm-up of the base on {config.format_warmup} trait-free rows")
        base_id = format_base(
            store, base_id, config, progress
        )  # reads format_warmup/epochs/lr, batch_size, seed
    log(f"[4] {config.prompts} number prompts answered by {len(config.animals) + 1} teachers")
    data, filt = filter_all(store, teacher_numbers(store, base_id, config, progress), config.max_rows)
    if filt["rows_out"] < 8:
        raise HeredityError(
            f"only {filt['rows_out']} prompts pass the filter for every teacher; raise prompts or keep "
            "format_warmup on"
        )
    log(f"[2] pre-screen; [3] subliminal prompting; {filt['rows_out']} common prompts")
    screen = prescreen(store, base_id, data[NEUTRAL], config)
    prompted = prompting(store, base_id, config)
    specific = prompted.pop("_specific", None)

    ref = reused_students(config, base_id, data) if config.reuse else None
    # label -> where its students were trained (a reused report's own reused labels keep their origin)
    reused = (
        {lab: x.get("reused_from") or Path(config.reuse).name for lab, x in ref["lift"].items()}
        if ref
        else {}
    )
    if ref:
        log(f"[5] reusing {', '.join(reused)} from {config.reuse}")
    labels = {lab: v for lab, v in student_labels(config).items() if lab not in reused}
    students = train_students(store, base_id, data, labels, config, progress, log)
    log("[6] evaluation")
    scores = evaluate_students(store, base_id, students, labels, config)
    results = lift_results(students, scores, ref, reused, config)
    rates = sampled_rates(students, scores, config) if config.rate_samples else None
    if rates is not None and ref:
        rates.update({lab: ref["rates"][lab] for lab in reused if (ref.get("rates") or {}).get(lab)})
    trained = [
        m for by_t in students.values() for ms in by_t.values() for m in ms
    ]  # in this store: the lineage
    students.update({lab: ref["students"][lab] for lab in reused})
    for a, n in name_tokens(store, base_id, config.animals).items():
        screen[a]["tokens"] = n
    report = {
        "experiment": "subliminal-lift",
        "config": config.model_dump(),
        "base": base_id,
        "data": data,
        "filter": filt,
        "prescreen": screen,
        "prompting": prompted,
        "prompting_specific": specific,
        "lift": results["plain"],
        "lift_numbers_prefix": results["numbers_prefix"],
        "rates": rates,
        "students": students,
        "reused": reused,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report["outcome"] = outcome(report)
    card = save_card(store, "subliminal-lift", report, trained, markdown, plot)
    return {
        "report": card["report"],
        "outcome": report["outcome"],
        "markdown": card["markdown"],
        "files": card["files"],
        "lineage_of": card["report"],
    }


def teacher_numbers(store: Store, base_id: str, config: Config, progress: bool) -> dict[str, str]:
    """Per teacher (neutral first), the number prompts answered at T = 1 by the base under its trait's system
    prompt (none for the neutral teacher), or by ``teacher_endpoint`` serving the base."""
    prompts = number_prompts(config.prompts, seed=config.seed)
    sampler = config.teacher_endpoint or base_id  # an endpoint's steps are keyed by its model name and URL
    return {
        t: sample_step(
            store,
            sampler,
            prompts,
            SampleConfig(
                n=1,
                temperature=1.0,
                max_new_tokens=config.max_new_tokens,
                seed=config.seed,
                batch_size=config.sample_batch,
                system_prompt=None if t == NEUTRAL else system_prompt(t),
            ),
            name=f"numbers-raw-{t}",
            progress=progress,
        )
        for t in [NEUTRAL, *config.animals]
    }


def train_students(
    store: Store, base_id: str, data: dict[str, str], labels: dict, config: Config, progress: bool, log
) -> dict[str, dict[str, list[str]]]:
    """label -> teacher -> its students, one per training seed: the steering vector on teacher t's sampled
    numbers; sft on them; the distillation arms on the neutral completions with the base under teacher t's
    system prompt as teacher (the neutral teacher's student is every student's twin)."""
    teachers = [NEUTRAL, *config.animals]
    students: dict[str, dict[str, list[str]]] = {lab: {t: [] for t in teachers} for lab in labels}
    for lab, (arm, method, rank) in labels.items():
        for k in range(config.student_seeds):
            seed = config.seed + k
            for t in teachers:
                log(f"[5] {lab} student of teacher {t}, seed {seed}")
                if arm == "steer":  # trained on teacher t's sampled numbers, as sft
                    students[lab][t].append(steer_student(store, base_id, data[t], config, seed, progress))
                    continue
                distill = arm != "sft"
                ft = student_config(config, arm, method, rank, seed, t)
                # sft trains on teacher t's own numbers; the distillation arms on the neutral completions,
                # where only the teacher's distributions differ
                rows = data[NEUTRAL] if distill else data[t]
                students[lab][t].append(
                    finetune(
                        store, base_id, rows, ft, teacher=base_id if distill else None, progress=progress
                    )["model"]
                )
    return students


def student_config(config: Config, arm: str, method: str, rank: int, seed: int, t: str) -> FinetuneConfig:
    """A fine-tuned student of teacher ``t``: the arm's loss, epochs and learning rate (the full fine-tune's
    own rate), LoRA α = r; the distillation arms' teacher is the base under t's system prompt."""
    distill = arm != "sft"
    return FinetuneConfig(
        method=method,
        lora_r=rank,
        lora_alpha=rank,
        loss=LOSS[arm],
        epochs=config.distill_epochs if distill else config.sft_epochs,
        lr=(config.distill_lr if distill else config.sft_lr) if method == "lora" else config.full_lr,
        batch_size=config.batch_size,
        seed=seed,
        teacher_system_prompt=(None if t == NEUTRAL else system_prompt(t)) if distill else None,
    )


def evaluate_students(store: Store, base_id: str, students: dict, labels: dict, config: Config) -> dict:
    """Every student's evaluation (``evaluate``), by student id; a steering vector is evaluated on its
    base."""
    steered = {
        m
        for lab, (arm, _, _) in labels.items()
        if arm == "steer"
        for ms in students[lab].values()
        for m in ms
    }
    return {
        m: evaluate(store, m, config, base_id if m in steered else None)
        for by_t in students.values()
        for ms in by_t.values()
        for m in ms
    }


def lift_results(students: dict, scores: dict, ref: dict | None, reused: dict, config: Config) -> dict:
    """Per variant, per student label: the lift report over training seeds (``evals.lift``) of this run's
    students and the reused ones, with the specificity's Holm-adjusted p over the declared family."""
    from heredity.evals.lift import lift_report

    S = config.student_seeds
    results: dict[str, dict] = {v: {} for v in VARIANTS}
    for variant in VARIANTS:
        for lab, by_t in students.items():
            logp = np.array(
                [
                    [[mean_log(scores[by_t[ti][s]][variant][aj]) for aj in config.animals] for s in range(S)]
                    for ti in config.animals
                ]
            )
            neutral = np.array(
                [[mean_log(scores[by_t[NEUTRAL][s]][variant][aj]) for aj in config.animals] for s in range(S)]
            )
            results[variant][lab] = lift_report(logp, neutral, config.animals, family=len(config.family))
        for lab in reused:  # Holm below runs over this run's students and the reused ones together
            results[variant][lab] = {
                **ref["lift" if variant == "plain" else "lift_numbers_prefix"][lab],
                "reused_from": reused[lab],
            }
        for lab, p in declared_holm(results[variant], config.family).items():
            results[variant][lab]["specificity"]["p_holm"] = p
    return results


def name_tokens(store: Store, base_id: str, animals: list[str]) -> dict[str, list[int]]:
    """How many tokens each name takes, capitalized and lowercase (Zur et al.'s entanglement is about one
    token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(store.path(base_id)))
    return {
        a: [len(tok(v, add_special_tokens=False)["input_ids"]) for v in (a.capitalize(), a)] for a in animals
    }


# ---- stages ------------------------------------------------------------------------------------


@op("filter-numbers-all", 1)
def filter_all(store: Store, raw: dict[str, str], max_rows: int) -> tuple[dict[str, str], dict]:
    """The strict filter on every teacher's answers, then all cut to the prompts that pass in all of them."""
    max_numbers = 10
    teachers = list(raw)
    cfg = {
        "filter": "strict",
        "max_numbers": max_numbers,
        "max_rows": max_rows,
        "teachers": teachers,
        "pairing": "prompt_index common to every teacher",
    }

    def fn(ctx):
        arms = {t: read_table(store.path(raw[t])).to_pylist() for t in teachers}
        paired, stats = paired_rows(
            arms, lambda r: check_numbers(r["completion"], max_numbers).ok, limit=max_rows
        )
        for t, rows in paired.items():
            kept = [
                {
                    "prompt": r["prompt"],
                    "prompt_index": r["prompt_index"],
                    "completion": r["completion"].strip(),
                }
                for r in rows
            ]
            write_table(ctx.output(t, "dataset", f"numbers-{t}", meta={"rows": len(kept)}), kept)
        return stats

    res = store.run_step("filter-numbers-all", cfg, [raw[t] for t in teachers], fn)
    return dict(res.outputs), res.metrics


@op("prescreen-traits", 1)
def prescreen(store: Store, base_id: str, data_neutral: str, config: Config) -> dict:
    """Per animal: KL(trait-prompted ‖ neutral) per completion position, full vocabulary and number tokens
    only."""
    animals, rows, batch = list(config.animals), config.prescreen_rows, min(config.sample_batch, 16)

    def fn(ctx):
        from heredity.engine.finetune import number_vocab
        from heredity.evals.entangled import trait_divergence

        model, tok = load(base_id, store)
        data = read_table(store.path(data_neutral)).to_pylist()[:rows]
        vocab = number_vocab(tok)
        out = {
            a: trait_divergence(
                model,
                tok,
                [r["prompt"] for r in data],
                [r["completion"] for r in data],
                system_prompt(a),
                vocab=vocab,
                batch_size=batch,
            )
            for a in animals
        }
        res = {
            a: {"kl_full": d["kl_full"], "kl_numbers": d["kl_numbers"], "prompts": d["prompts"]}
            for a, d in out.items()
        }
        (ctx.output("prescreen", "report", "trait-prescreen") / "prescreen.json").write_text(json.dumps(res))
        return res

    r = store.run_step(
        "prescreen-traits",
        {"animals": animals, "rows": rows, "batch": batch, "system_prompt": SYSTEM_PROMPT},
        [base_id, data_neutral],
        fn,
    )
    return json.loads((store.path(r["prescreen"]) / "prescreen.json").read_text())


@op(
    "subliminal-prompting",
    3,
    note="v2: the entangled-vs-control digit contrast, Holm over it too; v3: the animal-specific test (each "
    "animal's own number vs the other animals' numbers)",
)
def prompting(store: Store, base_id: str, config: Config) -> dict:
    """Subliminal prompting per animal: its most entangled digit vs its least entangled one."""
    animals, questions, batch = list(config.animals), config.questions, config.sample_batch

    def fn(ctx):
        from heredity.evals.entangled import entangled_numbers, subliminal_prompting
        from heredity.evals.trait import QUESTIONS

        model, tok = load(base_id, store)
        res = {}
        for a in animals:
            ranked = entangled_numbers(model, tok, system_prompt(a), k=10)
            top, low = ranked[0]["number"], min(ranked, key=lambda e: e["log_ratio"])["number"]
            res[a] = {
                "entangled": ranked[:3],
                **subliminal_prompting(
                    model, tok, a, [top], [low], questions=QUESTIONS[:questions], batch_size=batch
                ),
            }
        from heredity.evals.entangled import animal_specific_prompting

        # the animal-specific test (each animal's own number raises it more than the others' numbers do): the
        # entangled-vs-control contrast above is "love 1 vs love 0" for almost every animal
        res["_specific"] = animal_specific_prompting(
            model,
            tok,
            animals,
            {a: system_prompt(a) for a in animals},
            questions=QUESTIONS[:questions],
            batch_size=batch,
        )
        (ctx.output("prompting", "report", "subliminal-prompting") / "prompting.json").write_text(
            json.dumps(res, default=str)
        )
        return {}

    r = store.run_step(
        "subliminal-prompting",
        {"animals": animals, "questions": questions, "batch": batch, "system_prompt": SYSTEM_PROMPT},
        [base_id],
        fn,
    )
    return json.loads((store.path(r["prompting"]) / "prompting.json").read_text())


@op("steer-student", 1)
def steer_student(store: Store, base_id: str, data: str, config: Config, seed: int, progress: bool) -> str:
    """Arm (d): one residual vector after decoder layer ``steer_layer``, trained with Adam on the sampled
    numbers (completion-only loss, as the sft arm), every weight frozen; the same optimizer steps as the sft
    arm. The artifact is a report holding ``steering.safetensors`` (it is not a model: it needs its base, kept
    in meta)."""
    from heredity.engine.steer import SteerConfig

    n = store.get(data).meta.get("rows") or len(read_table(store.path(data)))
    steps = max(1, math.ceil(config.sft_epochs * math.ceil(n / config.batch_size)))
    sc = SteerConfig(
        layer=config.steer_layer, lr=config.steer_lr, max_steps=steps, batch_size=config.batch_size, seed=seed
    )

    def fn(ctx):
        from heredity.engine.steer import save_vector, train_vector

        model, tok = load(base_id, store)
        rows = read_table(store.path(data)).to_pylist()
        v, metrics = train_vector(model, tok, rows, sc, progress=progress)
        out = ctx.output(
            "vector",
            "report",
            f"steering-{store.get(data).name}-s{sc.seed}",
            meta={"type": "steering_vector", "base": base_id, "layer": sc.layer},
        )
        save_vector(out, v, sc.layer)
        return metrics

    return store.run_step("steer-student", sc, [base_id, data], fn)["vector"]


@op("eval-lift", 2, note="v2: per variant (plain, numbers-prefix); steering vectors evaluated on their base")
def evaluate(store: Store, model_id: str, config: Config, base_id: str | None = None) -> dict:
    """Per variant, per animal: P(the one-word answer names it) per question (``answer_probs``), for a model
    or adapter, or (``base_id`` given) a steering vector applied to that base."""
    from heredity.evals.trait import EVAL_VERSION

    animals, questions, batch, prefix_seed = (
        list(config.animals),
        config.questions,
        config.sample_batch,
        config.prefix_seed,
    )
    # the sampled rates' settings are keyed only when on; when off the step must not see them at all
    rate_samples, seed = (config.rate_samples, config.seed) if config.rate_samples else (None, None)

    def fn(ctx):
        import contextlib

        from heredity.engine.steer import load_vector, steer
        from heredity.evals.trait import QUESTIONS, answer_probs, numbers_prefixed

        if base_id is None:
            model, tok = load(model_id, store, merge_adapter=True)
            hook = contextlib.nullcontext()
        else:
            model, tok = load(base_id, store)
            v, layer = load_vector(store.path(model_id))
            hook = steer(model, v, layer)
        qs = QUESTIONS[:questions]
        with hook:
            res = {
                variant: answer_probs(
                    model,
                    tok,
                    animals,
                    numbers_prefixed(qs, prefix_seed) if variant != "plain" else qs,
                    batch_size=batch,
                )
                for variant in VARIANTS
            }
            if rate_samples:  # secondary: answers sampled at T = 1 (the same sampling seed for every student)
                from heredity.engine.sampling import sample
                from heredity.evals.trait import mentions

                answers = [
                    c.text
                    for c in sample(
                        model,
                        tok,
                        qs,
                        SampleConfig(
                            n=rate_samples, temperature=1.0, max_new_tokens=8, seed=seed, batch_size=batch
                        ),
                        progress=False,
                    )
                ]
                res["rates"] = {
                    a: [
                        sum(mentions(answers[q * rate_samples + k], a) for k in range(rate_samples))
                        for q in range(len(qs))
                    ]
                    for a in animals
                }
        (
            ctx.output("scores", "report", f"lift-scores-{store.get(model_id).name}") / "scores.json"
        ).write_text(json.dumps(res))
        return {}

    cfg = {
        "animals": animals,
        "questions": questions,
        "batch": batch,
        "eval": EVAL_VERSION,
        "variants": list(VARIANTS),
        "prefix_seed": prefix_seed,
    }
    if rate_samples:  # keyed only when on: without it the step computes exactly what it did before
        cfg.update(rate_samples=rate_samples, seed=seed)
    r = store.run_step("eval-lift", cfg, [model_id] if base_id is None else [model_id, base_id], fn)
    return json.loads((store.path(r["scores"]) / "scores.json").read_text())


def mean_log(p: list[float]) -> float:
    return float(np.mean([math.log(max(x, 1e-30)) for x in p]))


def student_labels(config: Config) -> dict[str, tuple[str, str, int]]:
    """label -> (arm, method, LoRA rank): the arms, then the rank sweep and the full fine-tune of
    ``sweep_arm``."""
    out = {arm: (arm, "lora", config.lora_r) for arm in config.arms}
    for r in config.sweep_ranks:
        out.setdefault(f"{config.sweep_arm}_r{r}", (config.sweep_arm, "lora", r))
    if config.sweep_full:
        out[f"{config.sweep_arm}_full"] = (config.sweep_arm, "full", config.lora_r)
    return out


# the fields that only choose which students a run trains: a reused report may differ from this run in these
# alone
CHOOSERS = {"arms", "sweep_arm", "sweep_ranks", "sweep_full", "reuse", "teacher_endpoint"}


def reused_students(config: Config, base_id: str, data: dict[str, str]) -> dict:
    """The earlier report named by ``config.reuse``, after checking that its students are exactly the ones
    this run would train: the same base and data artifacts (content ids) and the same value for every setting
    that enters a student's or an evaluation's key. Raises a one-line error naming the first difference."""
    path = Path(config.reuse)
    try:
        ref = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HeredityError(
            f"reuse={config.reuse}: cannot read it as a report.json ({type(e).__name__}); give the "
            "report.json of an earlier subliminal-lift run"
        ) from e
    if ref.get("experiment") != "subliminal-lift" or "data" not in ref:
        raise HeredityError(
            f"reuse={config.reuse}: not a subliminal-lift report that records its data ids; rerun that "
            "preset once with this version to re-render it"
        )
    mine, theirs = config.model_dump(), ref["config"]
    for k in sorted(set(mine) - CHOOSERS):
        if k not in theirs or theirs[k] != mine[k]:
            raise HeredityError(
                f"reuse={config.reuse}: its {k} is {theirs.get(k, '(absent)')!r}, this run's is "
                f"{mine[k]!r}; its students are not this run's — drop reuse or match {k}"
            )
    if ref["base"] != base_id or ref["data"] != data:
        raise HeredityError(
            f"reuse={config.reuse}: it was trained from base {ref['base']} on data "
            f"{sorted(ref['data'].values())}, this run built {base_id} and {sorted(data.values())} "
            "(another machine's arithmetic?); drop reuse and train every student here"
        )
    return ref


# ---- statistics --------------------------------------------------------------------------------


def sampled_rates(students: dict, scores: dict, config: Config) -> dict:
    """Secondary, descriptive: per student label, the share of sampled answers naming the student's own
    teacher's animal, pooled over teachers, seeds, questions and samples, for the trait students and for their
    neutral twins (on the same animals), with Wilson intervals."""
    from heredity.reports.stats import wilson_ci

    out = {}
    for lab, by_t in students.items():
        k_t = k_n = n = 0
        for a in config.animals:
            for s in range(config.student_seeds):
                k_t += sum(scores[by_t[a][s]]["rates"][a])
                k_n += sum(scores[by_t[NEUTRAL][s]]["rates"][a])
                n += config.questions * config.rate_samples
        out[lab] = {"trait": wilson_ci(k_t, n), "twin": wilson_ci(k_n, n)}
    return out


def declared_holm(results: dict, family: list[str]) -> dict[str, float]:
    """Holm-adjusted specificity p per tested label over the declared ``family`` (``stats.holm_family``: an
    untested or undetermined label counts as p = 1, so the family never shrinks)."""
    from heredity.reports.stats import holm_family

    try:
        return holm_family({lab: x["specificity"]["p"] for lab, x in results.items()}, family)
    except ValueError as e:
        raise HeredityError(str(e)) from e


def rerender(r: dict, family: list[str] | None = None) -> dict:
    """A committed report brought to the current statistics without retraining: the declared Holm family
    (``family``, else the report's own, else the preset's), Holm over it, smallest detectable effects at its
    level from the per-seed values, the spread note, and the outcome. Students, scores and lift matrices are
    left as they are."""
    from heredity.evals.lift import detection

    r = json.loads(json.dumps(r))
    cfg = r["config"]
    if family is None:
        family = cfg.get("family") or (LONG_FAMILY if cfg.get("animals") == LONG_ANIMALS else list(r["lift"]))
    cfg["family"] = list(family)
    for key in ("lift", "lift_numbers_prefix"):
        for lab, p in declared_holm(r[key], cfg["family"]).items():
            x = r[key][lab]
            x["specificity"]["p_holm"] = p
            for name in ("transfer", "specificity"):
                x[name].update(detection(x[name]["per_seed"], len(family)))
    r["outcome"] = outcome(r)
    return r


def outcome(r: dict) -> str:
    from heredity.reports.stats import fmt_num, fmt_p

    parts = []
    for arm, x in r["lift"].items():
        sp, tr = x["specificity"], x["transfer"]
        if sp["p_holm"] is None or not math.isfinite(sp["p_holm"]):
            word = "undetermined (one training seed: no test over seeds)"
        elif sp["p_holm"] < 0.05:
            word = "trait-specific transfer" if sp["diff"] > 0 else "an opposite, trait-specific shift"
        else:
            lo, hi = sp["lo"], sp["hi"]
            if lo is not None and hi is not None and (lo > 0 or hi < 0):
                word = (
                    "not established: not significant after Holm, though the unadjusted interval excludes 0 "
                    "(the estimate sits at the detection limit)"
                )
            else:
                word = (
                    "no trait-specific transfer detected (the smallest specificity detectable at the Holm "
                    f"level, α = 0.05/{len(r['config'].get('family') or r['lift'])}: "
                    f"{fmt_num(sp['min_detectable'])} nats)"
                )
        parts.append(
            f"{arm}: {word} — specificity {fmt_num(sp['diff'])} [{fmt_num(sp['lo'])}, {fmt_num(sp['hi'])}] "
            f"nats, Holm-adjusted {fmt_p(sp['p_holm'])}; transfer {fmt_num(tr['diff'])} nats, "
            f"{fmt_p(tr['p'])} (unit: training seeds, n = {x['seeds']}; permutation over teacher labels p = "
            f"{x['permutation']['p']:.2g}"
            + (f"; students of {x['reused_from']}" if x.get("reused_from") else "")
            + ")"
        )
    return "; ".join(parts)
