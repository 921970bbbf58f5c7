"""Prompt templates as versioned artifacts.

A template is a Jinja2 text (or a list of chat messages whose contents are Jinja2) with declared, typed
variables. ``create_prompt`` stores it as a ``prompt`` artifact (``p-`` + 16 hex of its content) through a
``create-prompt`` step keyed on its full content: the same content is the same id, never a second version; a
changed template is a new artifact, the next version of its name. Versions are numbered by when they were
first stored (1, 2, ...) and their files are never rewritten.

Aliases (``NAME@production``) are movable pointers to one version of a name, as in MLflow's prompt registry:
the current pointer is a row of ``prompt_aliases`` and every move is appended to ``prompt_alias_moves`` (who,
when, from, to). A reference (``Store.resolve_prompt``) is a ``p-`` id or prefix, ``NAME`` (the latest
version), ``NAME:N``, ``NAME@ALIAS``, ``prompts:/NAME/N`` or ``prompts:/NAME@ALIAS``.

Rendering runs in Jinja2's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` and autoescape off:
a template sees its variables' values and nothing of Python's internals (``{{ ''.__class__ }}`` is an
error, never text). A step that renders a template keys on its resolved ``p-`` id (an input of the step), so
moving an alias recomputes nothing and a new version recomputes what it feeds.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from jinja2 import StrictUndefined, Undefined, meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from heredity.errors import HeredityError
from heredity.store.db import PromptAliasMoveRow, PromptAliasRow
from heredity.store.ops import op
from heredity.store.store import ID_PREFIX_RE, PROMPT_ALIAS, PROMPT_NAME, PROMPT_REFS, Store, _now, _who

TEMPLATE_FILE = "template.json"  # a prompt artifact's one file: the template as canonical JSON
ROLES = ("system", "user", "assistant")
VAR_TYPES = ("str", "int", "float", "bool", "list")  # PromptVariable.type
RESERVED_ALIASES = ("latest",)  # NAME@latest is always the latest version
MAX_TEMPLATE_CHARS = 200_000  # per text or message content
MAX_RENDER_CHARS = 1_000_000  # a rendered prompt (and any string or list a template builds) longer is refused
MAX_EXPONENT = 10_000  # a ** b with |b| larger is refused (2 ** 10 ** 9 would take the process)
GIVE = {
    "str": "text",
    "int": "a whole number such as 3",
    "float": "a number such as 0.5",
    "bool": "true or false",
    "list": 'a JSON array such as ["a", "b"]',
}
INTERNALS = "a template may use its variables' values, never Python internals"
_NOT_VARIABLES = frozenset({"loop", "self", "caller", "varargs", "kwargs", "true", "false", "none"})


# ---- the sandbox ----------------------------------------------------------------------------------


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, plus bounds on the two operators that make a huge value from a few
    characters (``'x' * 10 ** 12``, ``2 ** 10000000``): such a template is refused, not run out of memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent of {right} is over the limit of {MAX_EXPONENT}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > MAX_RENDER_CHARS:
                        raise SecurityError(f"a value of {len(seq)} × {times} is over the limit")
        return super().call_binop(context, operator, left, right)


def _finalize(value: Any) -> Any:
    """What ``{{ ... }}`` prints: None as nothing; a function (``{{ name.upper }}``, whose repr holds an
    address) is refused."""
    if value is None:
        return ""
    if callable(value) and not isinstance(value, Undefined):  # an Undefined raises its own error when printed
        raise SecurityError(f"it prints the function {getattr(value, '__name__', '?')!r}, not a value")
    return value


ENV = _Sandbox(  # a prompt renders to exactly its text: its final newline is kept
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
)
_FORMAT = ENV.filters["format"]


def _bounded_format(value, *args, **kwargs):
    """Jinja2's ``format`` filter, refusing a width or precision of five digits or more (``'%0999999999d'``
    would build a gigabyte in one C call, which no time limit interrupts)."""
    if isinstance(value, str) and re.search(r"%[-+ #0]*(\d{5,}|\*)|\.(\d{5,}|\*)", value):
        raise SecurityError("a format width or precision over 9999 is over the limit")
    return _FORMAT(value, *args, **kwargs)


ENV.filters["format"] = _bounded_format
_RESERVED_NAMES = _NOT_VARIABLES | set(ENV.globals)  # names a variable cannot take


@functools.lru_cache(maxsize=512)
def _compiled(source: str):
    return ENV.from_string(source)


def _check_source(source: str, where: str) -> set[str]:
    """The variables ``source`` reads; a one-line error for a syntax error (with its line), an unknown filter
    or test, or a read of a name starting with '_' (Python's internals)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise HeredityError(
            f"{where} has {len(source)} characters, over the limit of {MAX_TEMPLATE_CHARS}; shorten it"
        )
    try:
        ast = ENV.parse(source)
        ENV.compile(ast)  # unknown filters and tests are found here, not by the parser
    except TemplateSyntaxError as e:
        raise HeredityError(
            f"{where}: Jinja2 syntax error at line {e.lineno}: {e.message}; fix the template"
        ) from None
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(attr, str) and attr.startswith("_"):
            raise HeredityError(
                f"{where} line {node.lineno}: reads {attr!r}; {INTERNALS} (names starting with '_')"
            )
    return set(meta.find_undeclared_variables(ast)) - set(ENV.globals)


# ---- values ---------------------------------------------------------------------------------------


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def coerce_value(name: str, type_: str, value: Any) -> Any:
    """``value`` as variable ``name``'s declared ``type_``: text from the command line is parsed ("3" for an
    int, "true" for a bool, a JSON array for a list); anything that is not the type is a one-line error."""
    bad = HeredityError(f"variable {name!r} is {type_}, got {_short(value)}; give {GIVE[type_]}")
    if type_ == "str":
        if isinstance(value, str):
            return value
        raise bad
    if type_ == "bool":
        if isinstance(value, bool):
            return value
        word = value.strip().lower() if isinstance(value, str) else None
        if word in ("true", "yes", "1"):
            return True
        if word in ("false", "no", "0"):
            return False
        raise bad
    if isinstance(value, bool):  # a bool is an int to Python, never to a template's author
        raise bad
    if type_ == "int":
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,4000}\s*", value):
            return int(value)
        raise bad
    if type_ == "float":
        try:
            x = float(value) if isinstance(value, int | float | str) else math.nan
        except (ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(x):
            raise bad
        return x
    if isinstance(value, str):  # a list from the command line: JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise bad from None
    if not isinstance(value, list | tuple):
        raise bad
    try:
        return json.loads(json.dumps(list(value), allow_nan=False))
    except (TypeError, ValueError):
        raise HeredityError(
            f"variable {name!r} holds a value that is not JSON data; give {GIVE['list']}"
        ) from None


# ---- the template ---------------------------------------------------------------------------------


def _one_line(e: ValidationError, what: str) -> HeredityError:
    """pydantic's validation error as one line naming the field."""
    x = e.errors()[0]
    where = ".".join(map(str, x["loc"])) or "value"
    return HeredityError(
        f"{what}: {where}: {x['msg']}; fix the value (a template has name, text or messages, variables, "
        "description; a variable has type, required, default, description)"
    )


class PromptVariable(BaseModel):
    """One declared variable of a template: its type, whether it must be given, its default. (Built alone, a
    bad field is pydantic's ValidationError; inside a ``PromptTemplate``, a one-line HeredityError naming
    the variable.)"""

    model_config = ConfigDict(extra="forbid")

    type: Literal["str", "int", "float", "bool", "list"] = "str"
    required: bool = True  # a variable with a default is never missing
    default: Any = None
    description: str = ""


class PromptTemplate(BaseModel):
    """A Jinja2 prompt: ``text``, or ``messages`` (each ``{"role": system|user|assistant, "content": ...}``),
    never both, with its declared ``variables``. Constructing one checks it: a syntax error (with its line), a
    variable the template uses but does not declare, a read of Python internals, a default that is not its
    variable's type are one-line ``HeredityError``s. Variables declared but unused are allowed
    (``unused_variables`` lists them; ``heredity prompt create`` prints a note)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    text: str | None = None
    messages: list[dict] | None = None
    variables: dict[str, PromptVariable] = Field(default_factory=dict)
    description: str = ""

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, data: Any, handler) -> PromptTemplate:
        try:
            return handler(data)
        except ValidationError as e:
            name = data.get("name") if isinstance(data, dict) else getattr(data, "name", None)
            raise _one_line(
                e, f"prompt template {name}" if isinstance(name, str) else "prompt template"
            ) from None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        check_name(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> PromptTemplate:
        where = f"prompt template {self.name}"
        if (self.text is None) == (self.messages is None):
            raise HeredityError(f"{where}: give text or messages (exactly one of them)")
        if self.text is not None and not self.text.strip():
            raise HeredityError(f"{where}: its text is empty; write the prompt")
        if self.messages is not None and not self.messages:
            raise HeredityError(f"{where}: messages is an empty list; give at least one message")
        for i, m in enumerate(self.messages or [], 1):
            if set(m) != {"role", "content"} or m["role"] not in ROLES or not isinstance(m["content"], str):
                raise HeredityError(
                    f"{where}: message {i} is {_short(m)}; write each message as "
                    '{"role": "system" | "user" | "assistant", "content": "<Jinja2 text>"}'
                )
        for var, spec in self.variables.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", var) or var in _RESERVED_NAMES:
                raise HeredityError(
                    f"{where}: {var!r} cannot name a variable; use letters, digits and '_' (a letter first), "
                    "not a Jinja2 name such as loop or range"
                )
            if spec.default is not None:
                spec.default = coerce_value(var, spec.type, spec.default)
        undeclared = sorted(self.used_variables() - set(self.variables))
        if undeclared:
            u = undeclared[0]
            raise HeredityError(
                f"{where} uses variable {u!r} but does not declare it; declare it in variables "
                f"(heredity prompt create: --var {u} or --var {u}:int) or fix the name"
            )
        return self

    def sources(self) -> list[tuple[str, str]]:
        """(where, Jinja2 source) of each part: the text, or each message's content."""
        if self.text is not None:
            return [(f"prompt template {self.name}", self.text)]
        return [
            (f"prompt template {self.name} message {i} ({m['role']})", m["content"])
            for i, m in enumerate(self.messages or [], 1)
        ]

    def used_variables(self) -> set[str]:
        """The variables the template reads (checking its syntax on the way)."""
        used: set[str] = set()
        for where, src in self.sources():
            used |= _check_source(src, where)
        return used

    def unused_variables(self) -> list[str]:
        """Declared variables the template never reads, sorted."""
        return sorted(set(self.variables) - self.used_variables())


def check_name(name: str) -> None:
    """A one-line error unless ``name`` can name a prompt template (``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most
    128 characters, not an artifact id)."""
    if not isinstance(name, str) or not re.fullmatch(PROMPT_NAME, name):
        raise HeredityError(
            f"{_short(name)} cannot name a prompt template; use letters, digits, '_', '.' and '-' "
            "(a letter or digit first, at most 128 characters)"
        )
    if ID_PREFIX_RE.match(name):
        raise HeredityError(f"{name!r} reads as an artifact id; give the prompt template another name")


def check_alias(alias: str) -> None:
    """A one-line error unless ``alias`` can name an alias (a letter, then letters, digits, '_', '-'; at most
    64; not ``latest``)."""
    if not isinstance(alias, str) or not re.fullmatch(PROMPT_ALIAS, alias):
        raise HeredityError(
            f"{_short(alias)} cannot name an alias; use a letter, then letters, digits, '_' or '-' "
            "(e.g. production, staging)"
        )
    if alias in RESERVED_ALIASES:
        raise HeredityError(f"alias {alias!r} is reserved (NAME@{alias} is always the latest version)")


def parse_template(data: dict) -> PromptTemplate:
    """A ``PromptTemplate`` from plain data (a spec file, template.json); any problem is one line."""
    if not isinstance(data, dict):
        raise HeredityError(f"a prompt template is a mapping, got {type(data).__name__}; see docs/prompts.md")
    return PromptTemplate.model_validate(data)


# ---- the store ------------------------------------------------------------------------------------


@op("create-prompt", 1, note="a prompt template as template.json, keyed on its full content")
def create_prompt(store: Store, template: PromptTemplate) -> str:
    """Store ``template`` as a ``prompt`` artifact holding ``template.json``; its id (``p-``). The step is
    keyed on the template's full content: the same content returns the same id and adds no version; changed
    content is the next version of its name. Checked in full before anything is written."""
    if not isinstance(template, PromptTemplate):
        raise HeredityError(f"create_prompt takes a PromptTemplate, got {type(template).__name__}")
    cfg = parse_template(template.model_dump(mode="json")).model_dump(mode="json")  # checked again

    def write(ctx):
        fmt = "text" if cfg["text"] is not None else "messages"
        out = ctx.output(
            "prompt",
            "prompt",
            cfg["name"],
            meta={"format": fmt, "variables": sorted(cfg["variables"]), "description": cfg["description"]},
        )
        body = json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (out / TEMPLATE_FILE).write_text(body, encoding="utf-8")

    return store.run_step("create-prompt", cfg, [], write)["prompt"]


@dataclass
class PromptVersion:
    """One stored version of a prompt template."""

    id: str
    name: str
    version: int  # from 1, in the order the versions were first stored
    created_at: datetime
    path: Path  # the artifact directory (template.json)
    meta: dict
    aliases: list[str]  # the aliases pointing to this version now
    kind: str = "prompt"


def versions(store: Store, name: str) -> list[PromptVersion]:
    """Every version of prompt template ``name``, oldest first (version 1 first); a one-line error listing
    the stored names when there is none."""
    check_name(name)
    arts = store.prompt_versions(name)
    if not arts:
        store.resolve_prompt(name)  # raises, listing what exists
    pointed: dict[str, list[str]] = {}
    for alias, aid in store.prompt_aliases(name).items():
        pointed.setdefault(aid, []).append(alias)
    return [
        PromptVersion(a.id, a.name, i, a.created_at, a.path, a.meta, pointed.get(a.id, []))
        for i, a in enumerate(arts, 1)
    ]


def list_prompts(store: Store) -> list[dict]:
    """One dict per stored template name, sorted by name: ``name``, ``versions`` (how many), ``latest`` (its
    latest version's id), ``latest_version``, ``aliases`` ({alias: id}), ``description`` (the latest
    version's), ``updated_at`` (when the latest version was stored, ISO)."""
    rows = []
    for name in store.prompt_names():
        arts = store.prompt_versions(name)
        rows.append(
            {
                "name": name,
                "versions": len(arts),
                "latest": arts[-1].id,
                "latest_version": len(arts),
                "aliases": store.prompt_aliases(name),
                "description": arts[-1].meta.get("description", ""),
                "updated_at": arts[-1].created_at.isoformat(),
            }
        )
    return rows


def resolve_prompt(store: Store, ref: str) -> str:
    """The ``p-`` id ``ref`` names (see ``Store.resolve_prompt`` for the forms); a one-line error listing what
    exists otherwise."""
    return store.resolve_prompt(ref)


def load_prompt(store: Store, ref: str) -> PromptTemplate:
    """The template ``ref`` names, read from its artifact (its files checked against its id)."""
    art = store.get(store.resolve_prompt(ref))
    try:
        data = json.loads((art.path / TEMPLATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HeredityError(
            f"prompt {art.id} has no readable {TEMPLATE_FILE} ({type(e).__name__}); "
            f"`heredity fsck {art.id}` checks it"
        ) from None
    return parse_template(data)


def prompt_info(store: Store, ref: str) -> dict:
    """What ``heredity prompt show`` prints: ``id``, ``name``, ``version``, ``versions`` (how many the name
    has), ``aliases`` (pointing to this version), ``created_at`` (ISO) and ``template`` (its fields)."""
    aid = store.resolve_prompt(ref)
    template = load_prompt(store, aid)
    vs = versions(store, template.name)
    v = next(x for x in vs if x.id == aid)
    return {
        "id": aid,
        "name": template.name,
        "version": v.version,
        "versions": len(vs),
        "aliases": v.aliases,
        "created_at": v.created_at.isoformat(),
        "template": template.model_dump(mode="json"),
    }


# ---- aliases --------------------------------------------------------------------------------------


def _version_of(store: Store, name: str) -> dict[str, int]:
    return {a.id: i for i, a in enumerate(store.prompt_versions(name), 1)}


def set_alias(store: Store, name: str, alias: str, ref: str | int, *, by: str | None = None) -> dict:
    """Point ``name@alias`` at the version ``ref`` names (any reference, or a version number), recording the
    move (who, when, from, to) in the alias history. Returns ``name``, ``alias``, ``from`` (the id it pointed
    to, None if new), ``to``, ``from_version``, ``to_version``, ``moved`` (False when it already pointed
    there: then nothing is recorded), ``moved_at`` (ISO) and ``moved_by`` (``by``, default user@host)."""
    check_name(name)
    check_alias(alias)
    if by is not None and (not by.strip() or len(by) > 255 or any(ord(c) < 32 for c in by)):
        raise HeredityError(f"by={_short(by)} is empty, too long or not one line; give who moved the alias")
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        ref = f"{name}:{int(ref)}"
    aid = store.resolve_prompt(ref)
    target = store.get(aid, verify_files=False)
    if target.name != name:
        raise HeredityError(
            f"{aid} is a version of prompt {target.name}, not of {name}; an alias points to a version of its "
            "own prompt"
        )
    who, lock = by or _who(), hashlib.sha256(f"prompt-alias\0{name}\0{alias}".encode()).hexdigest()
    with store.step_lock(lock, f"alias {name}@{alias}"), Session(store.engine) as s:
        row = s.get(PromptAliasRow, (name, alias))
        was, now = (row.artifact_id if row else None), _now()
        if was != aid:
            if row is None:
                s.add(PromptAliasRow(name=name, alias=alias, artifact_id=aid, updated_at=now, updated_by=who))
            else:
                row.artifact_id, row.updated_at, row.updated_by = aid, now, who
            s.add(
                PromptAliasMoveRow(name=name, alias=alias, from_id=was, to_id=aid, moved_at=now, moved_by=who)
            )
            s.commit()
        elif row is not None:
            now, who = row.updated_at, row.updated_by
    nums = _version_of(store, name)
    return {
        "name": name,
        "alias": alias,
        "from": was,
        "to": aid,
        "from_version": nums.get(was) if was else None,
        "to_version": nums[aid],
        "moved": was != aid,
        "moved_at": now.isoformat(),
        "moved_by": who,
    }


def alias_history(store: Store, name: str, alias: str | None = None) -> list[dict]:
    """Every move of ``name``'s aliases (only ``alias``'s when given), oldest first: ``alias``, ``from``,
    ``to``, ``from_version``, ``to_version``, ``moved_at`` (ISO), ``moved_by``."""
    check_name(name)
    if alias is not None and not re.fullmatch(PROMPT_ALIAS, alias):
        check_alias(alias)
    nums = _version_of(store, name)
    with Session(store.engine) as s:
        q = select(PromptAliasMoveRow).where(PromptAliasMoveRow.name == name)
        if alias is not None:
            q = q.where(PromptAliasMoveRow.alias == alias)
        rows = list(s.scalars(q.order_by(PromptAliasMoveRow.id)))
    return [
        {
            "alias": r.alias,
            "from": r.from_id,
            "to": r.to_id,
            "from_version": nums.get(r.from_id) if r.from_id else None,
            "to_version": nums.get(r.to_id),
            "moved_at": r.moved_at.isoformat(),
            "moved_by": r.moved_by,
        }
        for r in rows
    ]


# ---- rendering ------------------------------------------------------------------------------------


def _bind(template: PromptTemplate, variables: dict | None) -> dict:
    """The values a render sees: the given ones coerced to their declared types, defaults for the rest,
    None for optional ones without a default (rendered as nothing)."""
    given = {} if variables is None else variables
    if not isinstance(given, dict) or not all(isinstance(k, str) for k in given):
        raise HeredityError("variables must be a mapping of variable names to values")
    where = f"prompt {template.name}"
    declared = ", ".join(sorted(template.variables)) or "none"
    unknown = sorted(set(given) - set(template.variables))
    if unknown:
        raise HeredityError(f"{where} has no variable {unknown[0]!r}; its variables: {declared}")
    values = {}
    for name, spec in template.variables.items():
        if name in given and given[name] is not None:
            values[name] = coerce_value(name, spec.type, given[name])
        elif spec.default is not None:
            values[name] = spec.default
        elif spec.required:
            raise HeredityError(f"{where} needs variable {name!r} ({spec.type}); give it (--set {name}=...)")
        else:
            values[name] = None
    return values


def _template_line(e: BaseException) -> str:
    """' line N' of the template where rendering failed ('' if unknown): Jinja2 maps its frames to it."""
    tb, line = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" line {line}" if line else ""


def _render_one(where: str, source: str, values: dict) -> str:
    try:
        out = _compiled(source).render(values)
    except HeredityError:
        raise
    except (SecurityError, UndefinedError) as e:
        if isinstance(e, SecurityError) or re.search(r"attribute '_", str(e)):  # or a chain past a refusal
            line = _template_line(e)
            raise HeredityError(f"{where}{line}: refused by the sandbox ({e}); {INTERNALS}") from None
        raise HeredityError(f"{where}{_template_line(e)}: {e}; fix the template or the values") from None
    except Exception as e:  # the template's own code failed (1 / 0, a bad filter argument): one line
        raise HeredityError(
            f"{where}{_template_line(e)}: rendering failed ({type(e).__name__}: {e}); "
            "fix the template or the values"
        ) from None
    if len(out) > MAX_RENDER_CHARS:
        raise HeredityError(f"{where} rendered {len(out)} characters, over the limit of {MAX_RENDER_CHARS}")
    return out


def render(template: PromptTemplate, variables: dict | None = None) -> str | list[dict]:
    """``template`` rendered with ``variables`` (checked: an unknown or missing required variable, or a value
    not of its declared type, is a one-line error; defaults fill the rest): a string for a text template, a
    list of ``{"role", "content"}`` for a messages template."""
    values = _bind(template, variables)
    if template.text is not None:
        return _render_one(f"prompt template {template.name}", template.text, values)
    return [
        {"role": m["role"], "content": _render_one(where, src, values)}
        for m, (where, src) in zip(template.messages or [], template.sources(), strict=True)
    ]


def render_prompt(
    store: Store | PromptTemplate, ref: str | None = None, variables: dict | None = None
) -> str | list[dict]:
    """The template ``ref`` names in ``store``, rendered with ``variables`` (see ``render``). Also takes a
    ``PromptTemplate`` in place of the store, with no ``ref``."""
    if isinstance(store, PromptTemplate):
        if ref is not None:
            raise HeredityError("render_prompt takes a store and a reference, or a template alone")
        return render(store, variables)
    if ref is None:
        raise HeredityError(f"render_prompt needs a reference to a prompt: {PROMPT_REFS}")
    return render(load_prompt(store, ref), variables)


# ---- comparing versions ---------------------------------------------------------------------------


def canonical_text(template: PromptTemplate) -> str:
    """The template as lines to read and compare: name, description, variables, then the text or each
    message role by role (contents indented by two spaces)."""
    lines = [f"name: {template.name}", f"description: {template.description}", "variables:"]
    for var, spec in sorted(template.variables.items()):
        default = "" if spec.default is None else f" = {json.dumps(spec.default, ensure_ascii=False)}"
        note = f"  # {spec.description}" if spec.description else ""
        lines.append(f"  {var}: {spec.type}{'' if spec.required else '?'}{default}{note}")
    if template.text is not None:
        lines += ["text:", *(f"  {ln}" for ln in template.text.splitlines())]
    for i, m in enumerate(template.messages or [], 1):
        lines += [f"message {i} ({m['role']}):", *(f"  {ln}" for ln in m["content"].splitlines())]
    return "\n".join(lines) + "\n"


def diff_prompts(store: Store, a: str, b: str) -> str:
    """A unified diff (difflib) from version ``a`` to version ``b`` of their ``canonical_text``; "" when they
    are the same."""
    ids = [store.resolve_prompt(a), store.resolve_prompt(b)]
    temps = [load_prompt(store, i) for i in ids]
    labels = []
    for aid, t in zip(ids, temps, strict=True):
        labels.append(f"{t.name}:{_version_of(store, t.name)[aid]} ({aid})")
    return "".join(
        difflib.unified_diff(
            canonical_text(temps[0]).splitlines(keepends=True),
            canonical_text(temps[1]).splitlines(keepends=True),
            fromfile=labels[0],
            tofile=labels[1],
        )
    )
