"""Format spread: how much a model's answers hang on the prompt's format, and whether a fine-tuned child
inherits its parent's sensitivity (after Sclar et al., ICLR 2024, "FormatSpread").

Methods, as a paper's section would list them:
1. Formats (``data.formats``): ``formats`` distinct points of a grammar of spurious features (field names,
   casing, name/text separator, spacing between fields, option enumeration and separators), the plain
   format first. Each is a Jinja2 template stored as a version of the prompt ``format-spread``
   (``heredity.prompts``): the scoring step's inputs name every template version it rendered.
2. Items with exact answers: multiple-choice versions of the merging experiment's graded tasks
   (sentiment: 2 options; addition and number words: the answer and three near misses), ``items`` per task
   from the tasks' test part, each preceded by ``shots`` worked examples from the train part in the same
   format. A model is scored by the log-probability of each option's text after the answer field
   (``engine.logprobs.option_logprobs``, the raw text, no chat template; summed over the option's tokens, as
   lm-evaluation-harness's ``acc``); its answer is the most probable option.
3. Models: the parent (``model``); its children fine-tuned on ``train_items`` items per task rendered in the
   plain format only (completion-only loss on the right option's text): a LoRA child and a full child per
   training seed, and their linear merge; and an unrelated model, a ``tiny:`` model trained from scratch on
   the same rows, the reference for how much two models' format rankings agree by chance.
4. Measures: per format, accuracy with a Wilson interval (unit: items); the spread (max − min) with a
   bootstrap interval over items and a within-item permutation p for "the formats differ at all"; the
   agreement of parent and child rankings (Spearman ρ, Kendall τ over formats, paired bootstrap over
   items), read against the parent's split-half reliability and against ρ(parent, unrelated model);
   Thompson sampling's best / worst format at ``budget_share`` of the exhaustive evaluations vs the
   exhaustive answer.
5. Statistics: the Holm family (declared in the config) holds each model's spread test and, per child,
   ρ(parent, child) − ρ(parent, unrelated) (a paired bootstrap over items). Every p is over items: a claim
   about these trained models. With ``seeds`` ≥ 2 the children's ρ is also summarized over training seeds.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from heredity.data import put_rows
from heredity.data.formats import (
    answer_split,
    mc_items,
    render_vars,
    sample_formats,
    template_text,
)
from heredity.engine.finetune import FinetuneConfig, finetune
from heredity.experiments import experiment
from heredity.experiments.format_spread_render import markdown, plot
from heredity.experiments.format_spread_stats import analyse, family, model_labels
from heredity.merge import MergeConfig, merge
from heredity.prompts import PromptTemplate, PromptVariable, create_prompt, load_prompt, render
from heredity.reports.card import save_card
from heredity.reports.stats import declared_family
from heredity.store import Store, read_table, write_table
from heredity.store.ops import op, rows_op

rows_op("make-format-items", "make-format-training-rows")  # items and training rows, by data.io.put_rows
TASKS = ("sentiment", "addition", "words")
PROMPT_NAME = "format-spread"
PUBLISHED = {
    "largest spread, LLaMA-2-13B few-shot (accuracy points)": 76,
    "spread persists with model size, few-shot examples and instruction tuning": "yes",
    "format rankings across models": "weakly correlated",
}


class Config(BaseModel):
    model: str = Field("smollm2-135m-instruct", description="the parent: any model spec")
    tasks: list[Literal["sentiment", "addition", "words"]] = Field(default_factory=lambda: list(TASKS))
    items: int = Field(30, ge=4, description="test items per task")
    shots: int = Field(1, ge=0, description="worked examples before each item, in its format")
    formats: int = Field(12, ge=3, description="formats sampled from the grammar (the plain one first)")
    train_items: int = Field(60, ge=4, description="training items per task (plain format) for the children")
    children: list[Literal["lora", "full"]] = Field(default_factory=lambda: ["lora", "full"])
    merge: bool = Field(
        True, description="also the linear merge (weights 0.5/0.5) of the LoRA and full child"
    )
    lora: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(method="lora", chat=False, epochs=1, lr=3e-4, batch_size=8)
    )
    full: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(method="full", chat=False, epochs=1, lr=2e-5, batch_size=8)
    )
    unrelated: str = Field("tiny:small", description="trained from scratch on the same rows: the reference")
    unrelated_finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(method="full", chat=False, epochs=3, lr=1e-3, batch_size=16)
    )
    seeds: int = Field(1, ge=1, description="training seeds per child")
    budget_share: float = Field(
        0.25, gt=0, le=1, description="Thompson sampling's budget, share of exhaustive"
    )
    boot: int = Field(2000, ge=100, description="bootstrap draws and permutations")
    score_batch: int = Field(16, ge=1)
    holm_family: list[str] | None = Field(
        None, description="the tests of one Holm family (default: every one)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _family_is_declared(self):
        self.holm_family = declared_family(self.holm_family, family(self))
        if self.model.startswith("openai:") and (self.children or self.merge):
            raise ValueError(
                "an openai: endpoint is scored through /v1/completions but has no weights to fine-tune: "
                "set children=[] and merge=false (or give a local model)"
            )
        if self.merge and set(self.children) != {"lora", "full"}:
            raise ValueError(
                "merge needs both children: children must be ['lora', 'full'], or set merge false"
            )
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            "long": cls(items=100, formats=24, shots=2, train_items=300, seeds=3),
            "paper": cls(
                model="HuggingFaceTB/SmolLM2-1.7B-Instruct",
                items=300,
                formats=40,
                shots=3,
                train_items=1000,
                seeds=3,
            ),
        }


@experiment("format-spread", question="How much do a model's answers hang on the prompt's format?")
def run(store: Store, config: Config, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    formats = sample_formats(config.formats, config.seed)
    templates = [_template(store, f) for f in formats]
    items_id, items = _items(store, config)
    train_id = _training_rows(store, config, templates[0])
    labels = model_labels(config)
    models = {"parent": config.model}
    for s in range(config.seeds):
        tuned = {
            c: finetune(store, config.model, train_id, _ft(config, c, s), progress=progress)["model"]
            for c in config.children
        }
        models |= {labels[c][s]: mid for c, mid in tuned.items()}
        if config.merge:
            mc = MergeConfig(
                merge_method="linear",
                models=[
                    {"model": tuned["lora"], "parameters": {"weight": 0.5}},
                    {"model": tuned["full"], "parameters": {"weight": 0.5}},
                ],
                name="format-spread-merge",
            )
            models[labels["merge"][s]] = merge(store, mc, progress=progress)["model"]
    models["unrelated"] = finetune(
        store, config.unrelated, train_id, config.unrelated_finetune, progress=progress
    )["model"]
    scores = {
        label: _scores(store, mid, items_id, templates, config.score_batch, progress)
        for label, mid in models.items()
    }
    report = analyse(config, formats, templates, items, scores, PUBLISHED)
    report["models"] = models
    report["seconds"] = round(time.perf_counter() - t0, 1)
    card = save_card(store, "format-spread", report, [items_id, train_id, *templates], markdown, plot)
    return {**card, "lineage_of": models[next(iter(labels.values()))[0]] if labels else train_id}


def _ft(config: Config, child: str, seed: int) -> FinetuneConfig:
    return (config.lora if child == "lora" else config.full).model_copy(update={"seed": config.seed + seed})


def format_template(f) -> PromptTemplate:
    """A format of the grammar as a version of the prompt ``format-spread``."""
    return PromptTemplate(
        name=PROMPT_NAME,
        text=template_text(f),
        variables={
            "question": PromptVariable(type="str"),
            "options": PromptVariable(type="list"),
            "shots": PromptVariable(type="list", required=False, default=[]),
        },
        description=f"format-spread grammar point: {f.describe()}",
    )


def _template(store: Store, f) -> str:
    """The format stored as a version of the prompt ``format-spread``: its id."""
    return create_prompt(store, format_template(f))


def _shots(config: Config, task: str) -> list[dict]:
    """The worked examples shown before every item of ``task`` (the same ones in every format)."""
    return mc_items(task, config.shots, "train", config.seed + 1) if config.shots else []


def _items(store: Store, config: Config) -> tuple[str, list[dict]]:
    """The test items, each with its worked examples (the first ``shots`` train items of its task)."""
    rows = []
    for t in config.tasks:
        shots = _shots(config, t)
        rows += [
            {**it, "shots": shots, "item": i}
            for i, it in enumerate(mc_items(t, config.items, "test", config.seed))
        ]
    return put_rows(store, rows, "format-items", op="make-format-items"), rows


def _training_rows(store: Store, config: Config, plain: str) -> str:
    """Training items rendered in the plain format (the first), completion = the right option's text."""
    template = load_prompt(store, plain)
    rows = []
    for t in config.tasks:
        shots = _shots(config, t)
        for it in mc_items(t, config.train_items, "train", config.seed + 2):
            prompt, tail = answer_split(render(template, render_vars(it, shots)))
            rows.append({"prompt": prompt, "completion": tail + it["options"][it["answer"]]})
    return put_rows(store, rows, "format-training-rows", op="make-format-training-rows", inputs=[plain])


@op("format-scores", 1)
def _scores(
    store: Store,
    model: str,
    items_id: str,
    templates: list[str],
    batch: int,
    progress,
) -> list[dict]:
    """Every item in every format scored by ``model``: per (format, item) the log-probability of each
    option's text after the answer field (the sum over its tokens, not length-normalized), the chosen option
    and whether it is right (a stored dataset; the templates are inputs: their text is the key)."""
    from heredity.models import RemoteModel, materialize, parse_spec

    spec = parse_spec(model)
    remote = RemoteModel(spec.value, spec.base_url) if spec.kind == "openai" else None
    model_id = None if remote else materialize(model, store)
    # an endpoint is keyed by its spec: what it serves under that name is the user's to keep fixed
    cfg = {"batch": batch, "scoring": "option text, summed log-probability"}
    if remote:
        cfg["endpoint"] = model

    def run(ctx):
        from heredity.engine.logprobs import option_logprobs, remote_option_logprobs
        from heredity.models import load

        m, tok = load(model_id, store, merge_adapter=True) if model_id else (None, None)
        items = read_table(store.path(items_id)).to_pylist()
        out = []
        for fi, pid in enumerate(templates):
            template = load_prompt(store, pid)
            prompts, options = [], []
            for it in items:
                prompt, tail = answer_split(render(template, render_vars(it, it["shots"])))
                prompts.append(prompt)
                options.append([tail + o for o in it["options"]])
            scored = (
                remote_option_logprobs(remote, prompts, options, batch_size=batch)
                if remote
                else option_logprobs(m, tok, prompts, options, batch_size=batch, progress=progress)
            )
            for it, opt in zip(items, scored, strict=True):
                chosen = max(range(len(opt)), key=lambda i: opt[i])
                out.append(
                    {
                        "format": fi,
                        "template": pid,
                        "task": it["task"],
                        "item": it["item"],
                        "answer": it["answer"],
                        "chosen": chosen,
                        "correct": int(chosen == it["answer"]),
                        "option_logprobs": opt,
                    }
                )
        path = ctx.output("dataset", "dataset", "format-scores", meta={"rows": len(out)})
        write_table(path, out)
        return {"rows": len(out)}

    inputs = [*([model_id] if model_id else []), items_id, *templates]
    did = store.run_step("format-scores", cfg, inputs, run)["dataset"]
    return read_table(store.path(did)).to_pylist()
