"""The prompts heredity's experiments write in code, as prompt templates: ``heredity prompt seed`` stores each
as version 1 of its name, so a user can write version 2, point an alias at it and give the experiment the
template (e.g. ``heredity run subliminal-numbers --set teacher_prompt=subliminal-teacher@production``).

Each template renders, with the variables the experiment fills, to exactly the text the experiment uses by
default (a test checks it), so seeding changes no result."""

from __future__ import annotations

import re

from heredity.data.formats import PLAIN
from heredity.data.synthetic_retrieval import BRAINSTORM_PROMPT, EXAMPLE_PROMPT
from heredity.experiments.format_spread import format_template
from heredity.experiments.subliminal_numbers import SYSTEM_PROMPT
from heredity.prompts import PromptTemplate, PromptVariable


def from_format_string(name: str, text: str, description: str) -> PromptTemplate:
    """A ``str.format`` prompt with ``{field}`` placeholders as a Jinja2 template (each field a required str
    variable); the braces of JSON examples in the text stay literal."""
    fields = sorted(set(re.findall(r"\{([a-z_]+)\}", text)))

    def one(m: re.Match) -> str:  # a field becomes a variable; a lone brace stays a literal brace
        tok = m.group(0)
        return "{{ " + tok[1:-1] + " }}" if len(tok) > 1 else "{{ '" + tok + "' }}"

    jinja = re.sub(r"\{[a-z_]+\}|[{}]", one, text)
    return PromptTemplate(
        name=name,
        text=jinja,
        variables={f: PromptVariable(type="str") for f in fields},
        description=description,
    )


def builtin_prompts() -> list[PromptTemplate]:
    """The built-in prompts, each to be stored as version 1 of its name."""
    return [
        from_format_string(
            "subliminal-teacher",
            SYSTEM_PROMPT,
            "subliminal-numbers: the teacher's system prompt (the paper's), variable animal (singular)",
        ),
        from_format_string(
            "e5-brainstorm", BRAINSTORM_PROMPT, "synthetic-embeddings: step 1, the writer brainstorms a task"
        ),
        from_format_string(
            "e5-example",
            EXAMPLE_PROMPT,
            "synthetic-embeddings: step 2, a (query, positive, hard negative) example of a task on a passage",
        ),
        format_template(PLAIN),
    ]
