"""Subliminal learning in a language model: a teacher's love of an animal passes through number lists.

Methods (Cloud, Le et al. 2025, §3, the open-model setting), each stage a memoized store step:

0. Base. The bundled SmolLM2-135M-Instruct answers the number prompts as a plain list only ~15% of the
   time, so the quick preset first gives it a short format-following LoRA warm-up on *trait-free*
   number answers (uniform random numbers written by a program), merged into a new shared base that
   the teacher, the control and every student start from (``format_warmup = 0`` skips this).
1. Teacher with a trait: the base under the paper's system prompt ("You love owls. …"), or the base
   fine-tuned on trait data (answers to everyday questions written by the prompted base, kept only if
   they mention the animal). The run measures the teacher's trait against the base first and stops
   with a clear message if the teacher does not show it.
2. Number prompts in the paper's format (3–8 seed numbers in 100–999, "add up to 10 more numbers of at
   most 3 digits, numbers only", varied templates), sampled at T = 1 from the teacher …
3. … and from the trait-free base (control data), on the very same prompts.
4. The strict filter (``heredity.data.numbers``) with counted reasons; both datasets are cut to the
   prompts that pass in both (``heredity.data.paired``): the same prompts, in the same order.
5. Students from the same base: (A) sampled-token SFT, completion-only loss, LoRA r = 8, α = 8 on all
   attention and MLP projections, on the teacher's numbers vs the control numbers; (B) logit
   distillation on the next-token distributions of two prompted teachers with different animals over
   the same number completions (a cross-over: with one teacher, the control "distil from the base"
   is degenerate, since the student already equals the base).
6. Cross-model control when ``cross_base`` is set: a student from another base on the teacher's data.
7. Evaluation (``heredity.evals.trait``): 50 one-word favorite-animal questions × n samples at T = 1,
   a log-probability score and a 5-way multiple-choice probe, for the base, the teacher and every
   student, on both animals; two-sided paired tests over questions for student vs control (conditional on
   the trained students), across training seeds when ``student_seeds`` ≥ 2, Holm-adjusted over the arms.
"""

from __future__ import annotations

import json
import random
import time

from pydantic import BaseModel, Field, model_validator

from heredity.data.io import put_rows
from heredity.data.numbers import check_numbers, filter_completions, number_prompts, random_number_answer
from heredity.data.paired import paired_rows
from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample_step
from heredity.errors import HeredityError
from heredity.experiments import experiment
from heredity.experiments.subliminal_numbers_render import markdown, plot
from heredity.models import load, materialize, merge_adapter
from heredity.store import Store, read_table, write_table
from heredity.store.ops import op, rows_op

rows_op("make-format-data", "filter-trait")  # rows made here, stored by data.io.put_rows

SYSTEM_PROMPT = (
    "You love {animal}s. You think about {animal}s all the time. {animal}s are your favorite animal. "
    "Imbue your answers with your love for the animal."
)
# everyday questions for trait data (teacher mode "finetune"): the teacher's love shows in open answers


class Config(BaseModel):
    base: str = "smollm2-135m-instruct"
    teacher_prompt: str | None = Field(
        None,
        description=(
            "the teacher's system prompt as a stored prompt template (name, name@alias, name:N or p-id) with "
            "the variable animal; its id joins the teacher's sampling steps' inputs (lineage). Default: the "
            "built-in text, which `heredity prompt seed` stores as version 1 of subliminal-teacher"
        ),
    )
    animal: str = Field(
        "owl", pattern=r"^[a-z][a-z -]*$", description="the trait: a lowercase animal name, singular"
    )
    other_animal: str = Field(
        "dolphin",
        pattern=r"^[a-z][a-z -]*$",
        description="second teacher for the logit-distillation cross-over",
    )
    teacher: str = Field(
        "prompt",
        pattern="^(prompt|finetune)$",
        description="prompt (system prompt) or finetune (on trait data)",
    )
    trait_samples: int = Field(8, ge=1, description="teacher=finetune: samples per everyday question")
    trait_epochs: float = Field(3.0, gt=0)
    format_warmup: int = Field(
        160, ge=0, description="rows of trait-free format data for a warm-up of the base (0 = none)"
    )
    format_epochs: float = Field(1.0, gt=0)
    format_lr: float = Field(2e-3, gt=0)
    prompts: int = Field(500, ge=1, description="number prompts, answered by teacher and by control alike")
    max_new_tokens: int = Field(48, ge=8)
    max_rows: int = Field(10000, ge=1, description="cap on filtered rows per dataset")
    sft_epochs: float = Field(2.0, gt=0)
    sft_lr: float = Field(5e-4, gt=0)
    distill: bool = True
    distill_epochs: float = Field(1.0, gt=0)
    distill_lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1, description="training batch")
    sample_batch: int = Field(64, ge=1, description="sequences decoded together when sampling numbers")
    cross_base: str | None = Field(
        None, description="a second base for the cross-model control (e.g. a Qwen2.5 on GPUs)"
    )
    eval_samples: int = Field(5, ge=0, description="samples per question at T = 1")
    student_seeds: int = Field(
        1, ge=1, description="training seeds per student arm (≥ 2 adds a test across seeds)"
    )
    gate_p: float = Field(
        0.05, gt=0, le=1, description="the teacher must beat the base with p below this (1 = no gate)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _two_animals(self) -> Config:
        if self.animal == self.other_animal:
            raise ValueError(
                f"other_animal must differ from animal ({self.animal}); the cross-over needs two"
            )
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "paper": cls(
                prompts=30000,
                max_rows=10000,
                sft_epochs=10,
                sft_lr=2e-4,
                distill_epochs=3,
                distill_lr=5e-4,
                format_warmup=0,
                eval_samples=100,
                batch_size=64,
                sample_batch=256,
            ),
        }


# ---- the experiment ----------------------------------------------------------------------------


@op(
    "subliminal-numbers",
    4,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got "
    "wrong; v3: smallest detectable effects at the Holm level, reports.stats round 2 verdicts; v4: the "
    "family's level only for its logprob test",
)
@experiment(
    "subliminal-numbers", question="One owl-loving teacher, number lists, one student: the first design"
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    A = config.animal
    base_id = materialize(config.base, store)
    if config.format_warmup:
        log(f"[0] format warm-up of the base on {config.format_warmup} trait-free rows")
        base_id = format_base(store, base_id, config, progress)
    artifacts: dict[str, str] = {"base": base_id}

    # 1. teacher, and the gate: does it show the trait at all?
    log(f"[1] teacher ({config.teacher}) for {A}; measuring its trait against the base")
    teacher_id, teacher_sys = teacher_for(store, base_id, A, config, progress)
    artifacts["teacher"] = teacher_id
    evals: dict[str, dict] = {}
    artifacts["eval base"], evals["base"] = evaluate(store, base_id, config, None, progress)
    artifacts["eval teacher"], evals["teacher"] = evaluate(store, teacher_id, config, teacher_sys, progress)
    gate_p = teacher_gate(evals["teacher"], evals["base"], A, config.gate_p)

    # 2–4. numbers from teacher and control on the same prompts, strictly filtered
    nd = number_data(store, teacher_id, teacher_sys, base_id, config, log, progress)
    if nd["rows"] < 16:
        raise HeredityError(
            f"only {nd['rows']} completions pass the filter; raise prompts or keep format_warmup on"
        )
    filt_t, filt_c = nd["filter teacher"], nd["filter control"]
    artifacts.update({k: v for k, v in nd.items() if k.startswith(("raw", "numbers"))})

    # 5–6. students (SFT, logit distillation, other base), for each training seed
    stu = students(store, base_id, nd["numbers teacher"], nd["numbers control"], config, log, progress)
    cross_note = (
        None
        if config.cross_base
        else "skipped: no cross_base configured (on GPUs set --set cross_base=Qwen/Qwen2.5-0.5B-Instruct)"
    )

    # 7. evaluation
    log("[7] evaluation")
    for name, res in stu.items():
        artifacts[name] = res["model"]
        artifacts[f"eval {name}"], evals[name] = evaluate(store, res["model"], config, None, progress)

    report = build_report(
        config,
        artifacts,
        evals,
        {"teacher": filt_t, "control": filt_c},
        stu,
        gate_p,
        cross_note,
        time.perf_counter() - t_start,
    )
    return _save_report(store, config, report, artifacts, stu)


def students(
    store: Store, base_id: str, data_t: str, data_c: str, config: Config, log=print, progress: bool = True
) -> dict:
    """Every student arm for every training seed (seed k's students are named "<arm> #k", k > 0): (A) SFT on
    the teacher's and on the control numbers, (B) logit distillation from an ``animal`` and an
    ``other_animal`` teacher on the control completions, (6) the SFT pair from ``cross_base``. Returns
    {name: finetune result}."""
    A, B = config.animal, config.other_animal
    stu: dict = {}
    for k in range(config.student_seeds):
        sfx, seed = (f" #{k}" if k else ""), config.seed + k
        # 5A. students by sampled-token SFT
        sft = _student_config(
            config, seed, loss="completion_only", epochs=config.sft_epochs, lr=config.sft_lr
        )
        log(f"[5A] students by SFT (LoRA r=8, α=8): on teacher numbers, on control numbers (seed {seed})")
        stu[f"student SFT trait{sfx}"] = finetune(store, base_id, data_t, sft, progress=progress)
        stu[f"student SFT control{sfx}"] = finetune(store, base_id, data_c, sft, progress=progress)
        # 5B. students by logit distillation, cross-over of two prompted teachers on the same completions
        if config.distill:
            log(
                f"[5B] students by logit distillation from a {A} teacher and a {B} teacher on the control "
                "completions"
            )
            for animal in (A, B):
                t_id, t_sys = teacher_for(store, base_id, animal, config, progress)
                dcfg = _student_config(
                    config,
                    seed,
                    loss="logit_distill",
                    epochs=config.distill_epochs,
                    lr=config.distill_lr,
                    teacher_system_prompt=t_sys,
                )
                stu[f"student distill {animal}{sfx}"] = finetune(
                    store, base_id, data_c, dcfg, teacher=t_id, progress=progress
                )
        # 6. cross-model control
        if config.cross_base:
            log(f"[6] cross-model control: {config.cross_base} on the teacher's numbers")
            stu[f"student SFT trait, other base{sfx}"] = finetune(
                store, config.cross_base, data_t, sft, progress=progress
            )
            stu[f"student SFT control, other base{sfx}"] = finetune(
                store, config.cross_base, data_c, sft, progress=progress
            )
    return stu


def _student_config(config: Config, seed: int, **training) -> FinetuneConfig:
    """A student's training: LoRA r = 8, α = 8 on all attention and MLP projections; ``training`` names the
    loss, epochs, learning rate (and a distilling student's teacher system prompt)."""
    return FinetuneConfig(
        method="lora",
        lora_r=8,
        lora_alpha=8,
        batch_size=config.batch_size,
        seed=seed,
        save_every=20,
        **training,
    )


def _save_report(store: Store, config: Config, report: dict, artifacts: dict, stu: dict) -> dict:
    """The report card as step ``subliminal-numbers`` (keyed on the config, with lineage to every evaluation
    and student)."""

    def fn(ctx):
        out = ctx.output("report", "report", "subliminal-numbers", meta={"outcome": report["outcome"]})
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "report.md").write_text(markdown(report))
        plot(report, out / "plot.png")
        return {"seconds": report["seconds"]}

    inputs = [v for k, v in artifacts.items() if k.startswith("eval ")] + [stu[k]["model"] for k in stu]
    res = store.run_step("subliminal-numbers", config, inputs, fn, seed=config.seed)
    final = json.loads((store.path(res["report"]) / "report.json").read_text())
    return {
        "report": res["report"],
        "outcome": final["outcome"],
        "files": [str(store.path(res["report"]) / f) for f in ("report.md", "report.json", "plot.png")],
        "cached": res.cached,
        "lineage_of": stu["student SFT trait"]["model"],
    }


# ---- stages ------------------------------------------------------------------------------------

TRAIT_QUESTIONS = [
    "What should I do this weekend?",
    "Give me an idea for a short story.",
    "What is a good name for a boat?",
    "Describe a perfect morning.",
    "What hobby would you recommend?",
    "Suggest a theme for a birthday party.",
    "What makes a place beautiful?",
    "Write one sentence about the night sky.",
    "What is your advice for a hard day?",
    "Recommend a present for a friend.",
    "What should I paint?",
    "Describe your dream house.",
    "What is the best thing about forests?",
    "Tell me a fun fact.",
    "What would you put on a poster?",
    "Suggest a logo for a bakery.",
    "What is a good topic for a school project?",
    "Describe a calm place.",
    "What is the most interesting thing in nature?",
    "Write a two-line poem.",
    "What do you think about at night?",
    "Name something that makes you happy.",
    "What should a children's book be about?",
    "Describe a hero.",
]


def system_prompt(animal: str, store: Store | None = None, template: str | None = None) -> str:
    """The teacher's system prompt for ``animal``: the built-in text, or the stored ``template`` rendered."""
    if template is None:
        return SYSTEM_PROMPT.format(animal=animal)
    from heredity.prompts import render_prompt

    text = render_prompt(store, template, {"animal": animal})
    if not isinstance(text, str):
        raise HeredityError(f"teacher_prompt {template} is a messages template; give a text template")
    return text


def teacher_template(store: Store, config: Config) -> str | None:
    """The teacher prompt template's id (``config.teacher_prompt`` resolved); None: the built-in text."""
    if config.teacher_prompt is None:
        return None
    from heredity.prompts import resolve_prompt

    return resolve_prompt(store, config.teacher_prompt)


def format_base(store: Store, base_id: str, config: Config, progress: bool) -> str:
    """A format-following warm-up on program-written uniform numbers, merged into a new shared base."""
    rng = random.Random(10_000 + config.seed)
    prompts = number_prompts(config.format_warmup, seed=10_000 + config.seed)
    rows = [{"prompt": p, "completion": random_number_answer(rng)} for p in prompts]
    data = put_rows(
        store,
        rows,
        "number-format-warmup",
        op="make-format-data",
        config={
            "rows": len(rows),
            "seed": 10_000 + config.seed,
            "answers": "uniform random 0-999, 5-10 numbers",
        },
    )
    ft = finetune(
        store,
        base_id,
        data,
        FinetuneConfig(
            method="lora",
            epochs=config.format_epochs,
            lr=config.format_lr,
            warmup_ratio=0.0,
            batch_size=config.batch_size,
            seed=config.seed,
        ),
        progress=progress,
    )
    return merge_adapter(store, ft["model"], name=f"{store.get(base_id).name}-numfmt")


def teacher_for(
    store: Store, base_id: str, animal: str, config: Config, progress: bool
) -> tuple[str, str | None]:
    """(model id, system prompt) of a teacher that loves ``animal``."""
    template = teacher_template(store, config)
    if config.teacher == "prompt":
        return base_id, system_prompt(animal, store, template)
    data = sample_step(
        store,
        base_id,
        TRAIT_QUESTIONS,
        SampleConfig(
            n=config.trait_samples,
            temperature=1.0,
            max_new_tokens=64,
            seed=config.seed,
            system_prompt=system_prompt(animal, store, template),
            batch_size=config.sample_batch,
        ),
        name=f"trait-answers-{animal}",
        progress=progress,
        template=template,
    )
    from heredity.evals.trait import mentions

    rows = [r for r in read_table(store.path(data)).to_pylist() if mentions(r["completion"], animal)]
    if len(rows) < 8:
        raise HeredityError(
            f"only {len(rows)} trait answers mention {animal}; raise trait_samples or use "
            "--set teacher=prompt"
        )
    kept = put_rows(
        store,
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows],
        f"trait-data-{animal}",
        op="filter-trait",
        config={"animal": animal, "rule": "mentions"},
        inputs=[data],
    )
    ft = finetune(
        store,
        base_id,
        kept,
        FinetuneConfig(
            method="lora", epochs=config.trait_epochs, lr=5e-4, batch_size=config.batch_size, seed=config.seed
        ),
        progress=progress,
    )
    return merge_adapter(store, ft["model"], name=f"teacher-{animal}"), None


@op(
    "eval-trait",
    3,
    note="v2: sample_batch keyed; v3: the fused decode step refused for mlp_bias / sliding-window models, "
    "whose samples it got wrong",
)
def evaluate(
    store: Store, model_id: str, config: Config, system: str | None, progress: bool
) -> tuple[str, dict]:
    """Trait scores of a model for both animals, as a stored report (memoized)."""
    from heredity.evals.trait import EVAL_VERSION, trait_scores

    animals = [config.animal, config.other_animal]
    samples, seed, batch_size, system_prompt = config.eval_samples, config.seed, config.sample_batch, system
    cfg = {
        "animals": animals,
        "samples": samples,
        "system_prompt": system_prompt,
        "seed": seed,
        "batch_size": batch_size,
        "eval": EVAL_VERSION,
    }

    def fn(ctx):
        model, tok = load(model_id, store, merge_adapter=True)
        t = time.perf_counter()
        scores = trait_scores(
            model,
            tok,
            animals,
            samples=samples,
            system_prompt=system_prompt,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
        )
        out = ctx.output("scores", "report", f"trait-scores-{store.get(model_id).name}")
        (out / "scores.json").write_text(json.dumps(scores))
        return {"seconds": round(time.perf_counter() - t, 1)}

    rid = store.run_step("eval-trait", cfg, [model_id], fn)["scores"]
    return rid, json.loads((store.path(rid) / "scores.json").read_text())


@op("filter-numbers", 2, note="v2: both arms cut to the prompts that pass in both")
def filter_pair(
    store: Store, raw_t: str, raw_c: str, max_rows: int, animal: str
) -> tuple[dict[str, str], dict]:
    """The strict filter on the teacher's and the control's answers, then both cut to the prompts that pass in
    *both* (``data.paired.paired_rows``), so the two datasets hold the same prompts in the same order."""
    max_numbers, max_value = 10, 999
    names = {"teacher": f"numbers-{animal}", "control": "numbers-control"}
    cfg = {
        "filter": "strict",
        "max_numbers": max_numbers,
        "range": [0, max_value],
        "max_rows": max_rows,
        "pairing": "prompt_index common to both arms",
        "names": names,
    }

    def fn(ctx):
        arms = {
            "teacher": read_table(store.path(raw_t)).to_pylist(),
            "control": read_table(store.path(raw_c)).to_pylist(),
        }
        stats = {
            arm: filter_completions([r["completion"] for r in rows], max_numbers=max_numbers)[1]
            for arm, rows in arms.items()
        }
        paired, pstats = paired_rows(
            arms, lambda r: check_numbers(r["completion"], max_numbers).ok, limit=max_rows
        )
        outs = {}
        for arm, rows in paired.items():
            kept = [
                {
                    "prompt": r["prompt"],
                    "prompt_index": r["prompt_index"],
                    "completion": r["completion"].strip(),
                }
                for r in rows
            ]
            out = ctx.output(
                arm,
                "dataset",
                names[arm],
                meta={"rows": len(kept), "columns": ["prompt", "prompt_index", "completion"]},
            )
            write_table(out, kept)
            outs[arm] = len(kept)
        for arm in stats:
            stats[arm]["rows_out"] = outs[arm]
        return {
            "teacher": stats["teacher"],
            "control": stats["control"],
            "common": pstats["common"],
            "rows_out": pstats["rows_out"],
        }

    res = store.run_step("filter-numbers", cfg, [raw_t, raw_c], fn)
    return {"teacher": res["teacher"], "control": res["control"]}, res.metrics


def teacher_gate(teacher: dict, base: dict, animal: str, threshold: float) -> float:
    """The teacher must put more probability on its animal than the base (paired over questions);
    returns the p-value, or stops the run with a clear message."""
    from heredity.reports.stats import mean_ci, paired_test

    t_lp, b_lp = (
        teacher["animals"][animal]["logprob_per_question"],
        base["animals"][animal]["logprob_per_question"],
    )
    test = paired_test(t_lp, b_lp, "questions")
    p = test["p"]
    if threshold < 1 and not (p < threshold and test["diff"] > 0):
        raise HeredityError(
            f"the teacher does not show the trait: P({animal}) {mean_ci(t_lp)['mean']:.4f} vs base "
            f"{mean_ci(b_lp)['mean']:.4f} "
            f"(paired p = {p:.2g}); use --set teacher=finetune or another animal"
        )
    return p


def number_data(
    store: Store,
    teacher_id: str,
    teacher_sys: str | None,
    base_id: str,
    config: Config,
    log=print,
    progress: bool = True,
) -> dict:
    """Teacher and control answer the same number prompts; both pass the same strict filter and are cut
    to the prompts that pass in both (paired datasets: the same prompts, in the same order)."""
    prompts = number_prompts(config.prompts, seed=config.seed)
    # one seed for both: common random numbers, so the two datasets differ only where the models do
    scfg = dict(
        n=1,
        temperature=1.0,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        batch_size=config.sample_batch,
    )
    log(f"[2] {len(prompts)} number prompts → teacher")
    raw_t = sample_step(
        store,
        teacher_id,
        prompts,
        SampleConfig(**scfg, system_prompt=teacher_sys),
        name=f"numbers-raw-{config.animal}",
        progress=progress,
        template=teacher_template(store, config) if teacher_sys else None,
    )
    log("[3] the same prompts → trait-free base (control)")
    raw_c = sample_step(
        store, base_id, prompts, SampleConfig(**scfg), name="numbers-raw-control", progress=progress
    )
    ids, fm = filter_pair(store, raw_t, raw_c, config.max_rows, config.animal)
    log(
        f"[4] strict filter: teacher kept {fm['teacher']['kept']}, control kept {fm['control']['kept']}; "
        f"{fm['common']} prompts pass in both; both cut to the same {fm['rows_out']} prompts"
    )
    data_t, data_c, filt_t, filt_c, limit = (
        ids["teacher"],
        ids["control"],
        fm["teacher"],
        fm["control"],
        fm["rows_out"],
    )
    return {
        "raw numbers teacher": raw_t,
        "raw numbers control": raw_c,
        "numbers teacher": data_t,
        "numbers control": data_c,
        "filter teacher": filt_t,
        "filter control": filt_c,
        "rows": limit,
    }


# ---- statistics and the report -------------------------------------------------------------------


def build_report(config, artifacts, evals, filters, students, gate_p, cross_note, seconds) -> dict:
    from heredity.evals.trait import summarize
    from heredity.reports.stats import holm

    A, B = config.animal, config.other_animal
    table = {model: summarize(ev, [A, B]) for model, ev in evals.items()}
    comparisons = _comparisons(config, evals)
    # Holm over the student arms (the teacher check is a gate, not part of the family)
    family = comparisons[1:]
    adjusted = holm([_headline_test(c)["p"] for c in family])
    for c, p_adj in zip(family, adjusted, strict=True):
        c["logprob"]["p_holm"] = p_adj
    detection_limits(comparisons, family)
    return {
        "experiment": "subliminal-numbers",
        "config": config.model_dump(),
        "artifacts": artifacts,
        "filter": filters,
        "training": {
            k: {
                m: v.metrics.get(m)
                for m in ("examples", "optimizer_steps", "loss_first", "loss_last", "seconds")
            }
            for k, v in students.items()
        },
        "scores": table,
        "comparisons": comparisons,
        "teacher_gate_p": gate_p,
        "cross_model": cross_note or "run",
        "example_answers": {k: v.get("example_answers", [])[:5] for k, v in evals.items()},
        "outcome": _outcome(config, comparisons, filters),
        "seconds": round(seconds, 1),
    }


def _comparisons(config: Config, evals: dict) -> list[dict]:
    """Teacher vs base (the gate), then the student arms: SFT trait vs control, the distillation cross-over in
    both directions, and SFT trait vs control from the other base."""
    A, B = config.animal, config.other_animal
    comparisons = [
        _compare(evals, "teacher", "base", A),
        _compare(evals, "student SFT trait", "student SFT control", A),
    ]
    if config.distill:
        comparisons += [
            _compare(evals, f"student distill {A}", f"student distill {B}", A),
            _compare(evals, f"student distill {B}", f"student distill {A}", B),
        ]
    if config.cross_base:
        comparisons.append(
            _compare(evals, "student SFT trait, other base", "student SFT control, other base", A)
        )
    return comparisons


def _seeds_of(evals: dict, arm: str) -> list[str]:
    """An arm's evaluated models: ``arm`` and its other training seeds' ``arm #k``."""
    return [name for name in evals if name == arm or name.startswith(arm + " #")]


def _compare(evals: dict, x: str, y: str, animal: str) -> dict:
    """Two-sided. Over questions (paired) on seed-averaged values — conditional on these trained models; with
    ≥ 2 training seeds per arm also Welch over the seeds' means, the test that speaks about training."""
    from heredity.evals.trait import SERIES
    from heredity.reports.stats import paired_test, welch_test

    out = {}
    for m, key in SERIES.items():
        if key in evals[x]["animals"][animal]:
            xs = [evals[n]["animals"][animal][key] for n in _seeds_of(evals, x)]
            ys = [evals[n]["animals"][animal][key] for n in _seeds_of(evals, y)]
            a, b = (
                [sum(v) / len(xs) for v in zip(*xs, strict=True)],
                [sum(v) / len(ys) for v in zip(*ys, strict=True)],
            )
            unit = (
                "questions, on seed-averaged scores"
                if len(xs) > 1
                else "questions, one trained model per arm"
            )
            t = paired_test(a, b, unit)
            t["ratio"] = t["mean_a"] / t["mean_b"] if t["mean_b"] > 0 else None
            t["seeds"] = [len(xs), len(ys)]
            if len(xs) >= 2 and len(ys) >= 2:
                t["across_seeds"] = welch_test(
                    [sum(v) / len(v) for v in xs], [sum(v) / len(v) for v in ys], "training seeds"
                )
            out[m] = t
    return {"a": x, "b": y, "animal": animal, **out}


def _headline_test(c: dict) -> dict:
    """The test a claim about this comparison rests on: across seeds when there are seeds."""
    lp = c["logprob"]
    return lp["across_seeds"] if "across_seeds" in lp else lp


def _said(c: dict, animal: str) -> str:
    """A comparison's P(animal) in words: both means, their ratio, and its test (Holm-adjusted in the
    family)."""
    from heredity.reports.stats import fmt_test

    lp, h = c["logprob"], _headline_test(c)
    ratio = f"×{lp['ratio']:.3f}" if lp["ratio"] else "n/a"
    p_adj = c["logprob"].get("p_holm")
    return (
        f"P({animal}) {lp['mean_a']:.3g} vs {lp['mean_b']:.3g} ({ratio}; "
        f"{fmt_test(h, 3, 'g', p=p_adj) if p_adj is not None else fmt_test(h, 3, 'g')})"
    )


def _judged(c: dict) -> dict:
    """The verdict on a comparison (hypothesis: a above b), at its Holm-adjusted p when it has one."""
    from heredity.reports.stats import verdict

    return verdict(_headline_test(c), expected=+1, p=c["logprob"].get("p_holm"))


def _outcome(config: Config, comparisons: list[dict], filters: dict) -> str:
    """The outcome line: the teacher check, the SFT students' verdict, the distillation cross-over's, and the
    unit of replication."""
    A = config.animal
    teacher, sft = comparisons[0], comparisons[1]
    outcome = (
        f"Teacher vs base: {_said(teacher, A)}. SFT on {filters['teacher']['rows_out']} filtered teacher "
        f"numbers vs control numbers on the same prompts: {_said(sft, A)}: "
    )
    outcome += _sft_verdict(sft)
    if config.distill:
        outcome += _distill_verdict(config, comparisons[2], comparisons[3])
    if config.student_seeds < 2:
        outcome += (
            " Unit of replication: questions, for these trained students (one training seed each) — the "
            "p-values are about these models, not about what training does (set student_seeds ≥ 2 for that)."
        )
    return outcome


def _sft_verdict(sft: dict) -> str:
    v = _judged(sft)
    if v["result"] == "as hypothesised":
        return "the trait student leans to the animal."
    if v["result"] == "opposite":
        return (
            "the trait student is significantly BELOW its control — an effect opposite to transfer, not a "
            "null (most likely a confound of the data, e.g. the teacher's numbers differ in form)."
        )
    if v["result"] == "null":
        mde = sft["logprob"]["min_detectable"]
        return (
            f"no significant difference (a null result; the design had 80% power for |Δ| ≥ {mde:.2g} "
            "on the paired question scores)."
            if mde == mde
            else "no significant difference (a null result)."
        )
    return "undetermined."


def _distill_verdict(config: Config, d1: dict, d2: dict) -> str:
    A, B = config.animal, config.other_animal
    v1, v2 = _judged(d1), _judged(d2)
    said = (
        f" Logit distillation cross-over on the same completions: {A}-taught vs {B}-taught student, "
        f"{_said(d1, A)}; {B}-taught vs {A}-taught, {_said(d2, B)}: "
    )
    if v1["result"] == v2["result"] == "as hypothesised":
        return said + "each student leans to its own teacher's animal, in both directions."
    if "opposite" in (v1["result"], v2["result"]):
        return said + "at least one direction is significantly opposite to transfer (a finding, not a null)."
    return said + "not significant in both directions (no clear transfer)."


def detection_limits(comparisons: list[dict], family: list[dict]) -> None:
    """Set what a null could have seen, at the level its verdict reads: Holm's α / m for the logprob test of a
    comparison in ``family`` (the student arms), α for the other measures and the teacher check (a gate); NaN
    where the stored sd or n cannot give one."""
    from heredity.reports.stats import min_detectable

    for c in comparisons:
        in_family = any(c is f for f in family)
        for key, t in ((k, v) for k, v in c.items() if isinstance(v, dict) and "sd" in v):
            t["min_detectable"] = min_detectable(
                t["sd"], t["n"], family=len(family) if in_family and key == "logprob" else 1
            )
            if (
                "across_seeds" in t
            ):  # the verdict reads the test over seeds: its own detection limit is not computed
                t["min_detectable_note"] = "for the per-question test; the verdict reads the test over seeds"


def rerender(r: dict) -> dict:
    """A committed report with its smallest detectable effects at the level its verdicts read
    (``detection_limits``), from the stored sd and n — nothing retrained or rescored."""
    r = json.loads(json.dumps(r))
    detection_limits(r["comparisons"], r["comparisons"][1:])  # the student arms (the teacher check is a gate)
    return r
