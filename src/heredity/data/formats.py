"""A grammar of prompt formats (after FormatSpread, Sclar et al., ICLR 2024) and multiple-choice items with
exact answers to render in them.

A ``Format`` is one choice per spurious feature: the field names (question / options / answer), their
casing, the separator between a field's name and its text, the spacing between fields, how options are
enumerated and what separates them. Two formats that differ only in these say the same thing: a model
whose accuracy moves between them is sensitive to form, not content. ``sample_formats`` draws distinct
formats (the first is always the plain one, ``PLAIN``); ``template_text`` writes a format as a Jinja2
template over the variables ``question`` (str), ``options`` (list of str) and ``shots`` (worked examples,
each a dict with ``question``, ``options`` and ``answer``, an option's index), so each format is stored as
a prompt template version (``heredity.prompts``).

``mc_items`` turns the merging experiment's graded tasks (``data.tasks``) into multiple-choice items with
one right option: *sentiment* (2 options), *addition* and *words* (4 options: the answer and three near
misses). Parts ``train`` / ``val`` / ``test`` are the tasks' own disjoint parts. ``answer_split`` cuts a
rendered item where the answer begins, so a model is scored by the log-probability of each option's text
after the answer field (as lm-evaluation-harness scores multiple choice: no letter to map, no parsing).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

from heredity.data import tasks

FIELDS = {
    "question": ("Question", "Q", "Input", "Problem"),
    "options": ("Options", "Choices", "Answers", "Candidates"),
    "answer": ("Answer", "A", "Output", "Response"),
}
CASINGS = ("as is", "upper", "lower", "title")
SEPARATORS = (": ", " : ", ":: ", " - ", ":\n", " = ", ": \n")
SPACINGS = ("\n", "\n\n", " || ", " ; ", "\n--\n")
ENUMERATIONS = ("A. ", "(A) ", "a) ", "1. ", "[1] ", "I. ", "i) ", "A: ")
OPTION_SEPARATORS = ("\n", "; ", " | ", ", ", "  ")
ROMAN = ("I", "II", "III", "IV", "V", "VI")


@dataclass(frozen=True)
class Format:
    """One point of the grammar: every field is a spurious feature of a prompt."""

    question: str = "Question"
    options: str = "Options"
    answer: str = "Answer"
    casing: str = "as is"
    separator: str = ": "
    spacing: str = "\n"
    enumeration: str = "A. "
    option_separator: str = "\n"

    def labels(self, n: int) -> list[str]:
        """The first ``n`` option labels as the model must answer them ("A", "(b)", "iii", ...)."""
        e = self.enumeration.strip()
        if "A" in e:
            keys = [chr(ord("A") + i) for i in range(n)]
        elif "a" in e:
            keys = [chr(ord("a") + i) for i in range(n)]
        elif "1" in e:
            keys = [str(i + 1) for i in range(n)]
        elif "I" in e:
            keys = list(ROMAN[:n])
        else:
            keys = [r.lower() for r in ROMAN[:n]]
        marker = re.sub(r"[A-Za-z0-9]+", "{}", e, count=1)
        return [marker.format(k) for k in keys]

    def field(self, kind: str) -> str:
        name = getattr(self, kind)
        return {"upper": name.upper(), "lower": name.lower(), "title": name.title()}.get(self.casing, name)

    def describe(self) -> str:
        """A one-line summary, e.g. ``Q: … || (A) …; (B) … || Answer:``."""
        return (
            f"{self.field('question')}{self.separator!r}…{self.spacing!r}{self.field('options')}"
            f"{self.separator!r}{self.enumeration!r}…{self.option_separator!r}…{self.spacing!r}"
            f"{self.field('answer')}{self.separator!r}"
        )


PLAIN = Format()
AXES = {
    "question": FIELDS["question"],
    "options": FIELDS["options"],
    "answer": FIELDS["answer"],
    "casing": CASINGS,
    "separator": SEPARATORS,
    "spacing": SPACINGS,
    "enumeration": ENUMERATIONS,
    "option_separator": OPTION_SEPARATORS,
}


def sample_formats(n: int, seed: int = 0) -> list[Format]:
    """``n`` distinct formats: ``PLAIN`` first, then uniform draws from the grammar, none rendering the same
    template as one before it (the ``title`` casing of an already title-case name is that name)."""
    size = 1
    for values in AXES.values():
        size *= len(values)
    if n > size:
        raise ValueError(f"the grammar holds {size} formats; asked for {n}")
    rng, out, seen = random.Random(seed), [PLAIN], {template_text(PLAIN)}
    for _ in range(1000 * n):
        if len(out) == n:
            break
        f = Format(**{axis: rng.choice(values) for axis, values in AXES.items()})
        if template_text(f) not in seen:
            out.append(f)
            seen.add(template_text(f))
    if len(out) < n:
        raise ValueError(f"drew only {len(out)} distinct formats of the {n} asked; ask for fewer")
    return out


def _item_block(f: Format, question: str, options: str, answer: str | None) -> str:
    """One item in Jinja2 from the expressions ``question`` and ``options``: the question, the enumerated
    options and the answer field (with ``answer``, the worked answer's text; without, left open)."""
    opts = (
        "{% for o in " + options + " %}{{ LABELS[loop.index0] }} {{ o }}"
        "{% if not loop.last %}" + _lit(f.option_separator) + "{% endif %}{% endfor %}"
    )
    block = (
        _lit(f.field("question") + f.separator)
        + "{{ "
        + question
        + " }}"
        + _lit(f.spacing + f.field("options") + f.separator)
        + opts
        + _lit(f.spacing + f.field("answer") + f.separator)
    )
    return block + ("{{ " + options + "[" + answer + "] }}" + _lit(f.spacing) if answer else "")


def _lit(text: str) -> str:
    """Literal text inside a Jinja2 template (nothing in it is read as template syntax)."""
    return "{% raw %}" + text + "{% endraw %}" if "{" in text or "%" in text or "#" in text else text


def template_text(f: Format) -> str:
    """The format as a Jinja2 template over ``question`` (str), ``options`` (list) and ``shots`` (list of
    {question, options, answer index})."""
    head = "{% set LABELS = " + repr(f.labels(len(ROMAN))) + " %}"
    shots = "{% for s in shots %}" + _item_block(f, "s.question", "s.options", "s.answer") + "{% endfor %}"
    return head + shots + _item_block(f, "question", "options", None)


def render_vars(item: dict, shots: list[dict]) -> dict:
    """The template's variables for one item and its worked examples."""
    return {
        "question": item["question"],
        "options": list(item["options"]),
        "shots": [{"question": s["question"], "options": s["options"], "answer": s["answer"]} for s in shots],
    }


def answer_split(text: str) -> tuple[str, str]:
    """(prompt, the text every option's label follows): trailing spaces of a rendered item move to the
    continuation, so that a label's first token carries its space as the tokenizer would write it."""
    cut = len(text.rstrip(" "))
    return text[:cut], text[cut:]


# ---- items --------------------------------------------------------------------------------------------


def _near(n: int, rng: random.Random, low: int, high: int) -> list[int]:
    cands = [c for c in {n + 1, n - 1, n + 10, n - 10, n + 2, n - 2} if low <= c <= high and c != n]
    rng.shuffle(cands)
    return cands[:3]


def mc_items(task: str, n: int, part: str, seed: int = 0) -> list[dict]:
    """``n`` multiple-choice items {task, question, options, answer (index)} from ``data.tasks``' part."""
    rng = random.Random(f"{task}-{part}-{seed}")
    out = []
    if task == "sentiment":
        for r in tasks.sentiment(n, part, seed):
            review = r["prompt"].split("\n")[0]
            opts = ["positive", "negative"]
            out.append(
                {
                    "question": f"{review} Is this review positive or negative?",
                    "options": opts,
                    "answer": opts.index(r["completion"]),
                }
            )
    elif task == "addition":
        for r in tasks.addition(n, part, seed):
            q = r["prompt"].split("?")[0] + "?"
            right = int(r["completion"])
            out.append(_shuffled(q, [right, *_near(right, rng, 0, 198)], rng, str))
    elif task == "words":
        for r in tasks.words(n, part, seed):
            num = int(r["prompt"].split("number ")[1].split(" ")[0])
            q = f"How is the number {num} written in English words?"
            out.append(_shuffled(q, [num, *_near(num, rng, 1, 999)], rng, tasks.number_words))
    else:
        raise ValueError(f"unknown task {task!r}; choose from sentiment, addition, words")
    return [{"task": task, **it} for it in out]


def _shuffled(question: str, values: list[int], rng: random.Random, show) -> dict:
    order = list(range(len(values)))
    rng.shuffle(order)
    return {"question": question, "options": [show(values[i]) for i in order], "answer": order.index(0)}


def as_dict(f: Format) -> dict:
    return asdict(f)
