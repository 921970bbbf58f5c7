"""Instructions with verifiable constraints, in the style of IFEval (Zhou et al. 2023, arXiv 2311.07911).

A ``Constraint`` is a kind (IFEval's instruction id, e.g. ``length_constraints:number_words``) and its
parameters (IFEval's kwargs, same names: ``{"relation": "at least", "num_words": 50}``). ``text()`` is the
phrase appended to an instruction (IFEval's wording); ``check(constraint, answer)`` grades an answer
exactly, with no model in the loop.

Strict and loose, as IFEval defines them: an answer follows a constraint strictly when it is not blank and
the checker accepts it as it is; loosely when the checker accepts any of 8 variants: the answer with its
first line, its last line, both, or neither removed (lines split on ``\\n``, the rest stripped), each with
and without every ``*`` removed (markdown emphasis). Loose is an upper bound: it forgives "Sure, here it
is:" before a JSON answer, and it also forgives a forbidden word on the dropped line.

The checkers follow IFEval's ``instructions.py``; where they differ, it is said at the kind:

* words: ``count_words`` counts the runs of ``\\w`` (Unicode letters, digits, underscore), which is exactly
  what IFEval's nltk ``RegexpTokenizer(r"\\w+")`` counts: "don't" and "well-known" are 2 words, "3.14" is 2.
* sentences: IFEval uses nltk's punkt; nltk is not a dependency here, so ``split_sentences`` is a small
  documented splitter (see there). Counts agree with punkt on plain prose; they can differ on rare
  abbreviations and on lists without end punctuation.
* keywords (existence, frequency, forbidden words) match whole words, case-insensitively, the keyword taken
  literally: "art" is not found in "start". IFEval matches forbidden words this way but existence and
  frequency as a bare substring (and as a regex).
* bullets count lines that start (after spaces) with ``* `` or ``- ``; IFEval also counts ``*word`` and
  ``---`` lines.
* postscript: the marker must start a line; IFEval also accepts it mid-line.
* lowercase / capital letters: IFEval also runs a language detector ("in English"); that part is dropped.

``constraint_rows`` makes prompts = a simple writing task on a subject + 1 or 2 constraint phrases. Subjects
are split 60/20/20 into train / val / eval parts (``tasks._split``), so no eval prompt shares its subject
with a training prompt. The compatible pairs of kinds are split too (``pair_split``): two-constraint rows
of ``train`` use only the training pairs, those of ``val`` and ``eval`` only the held-out pairs
(``held_out_pairs``), so an eval prompt combining two constraints combines two kinds never seen together
in training (each kind alone, and with other partners, is). ``score_answer`` grades one answer (IFEval's
prompt-level and instruction-level results), ``ifeval_accuracy`` a set of answers.
"""

from __future__ import annotations

import json
import operator
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from heredity.data.tasks import _part, _split
from heredity.errors import HeredityError

# ---- counting ------------------------------------------------------------------------------------------

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "fig", "approx", "dept"})


def count_words(text: str) -> int:
    """The number of runs of word characters (regex ``\\w+``: letters, digits, underscore; Unicode-aware),
    as IFEval's ``count_words`` (nltk ``RegexpTokenizer(r"\\w+")``) counts them. "don't" is 2 words."""
    return len(WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, in order.

    A sentence ends at a run of ``.``, ``!`` or ``?`` (with any closing quotes or brackets after it)
    followed by whitespace or the end of the text, except a single ``.`` after a known abbreviation
    ("Dr.", "Mr.", "vs.", see ``ABBREVIATIONS``) or after a single letter (an initial, "e.g.", "P.S."). A
    period inside a token ("3.14", "example.com") ends nothing, an ellipsis followed by a space does. Text
    after the last end counts as a sentence. A piece without a word character ("***", "!!!") is no
    sentence and joins the next one. Line breaks end nothing, as in punkt: a list without end punctuation
    is one sentence.
    """
    out: list[str] = []
    start = 0
    for m in SENTENCE_END.finditer(text):
        if m.group().rstrip("\"'\u201d\u2019)]") == ".":
            j = m.start()
            while j > start and (text[j - 1].isalnum() or text[j - 1] == "_"):
                j -= 1
            word = text[j : m.start()]
            if word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        piece = text[start : m.end()].strip()
        if WORD.search(piece):
            out.append(piece)
            start = m.end()
    tail = text[start:].strip()
    if WORD.search(tail):
        out.append(tail)
    return out


def count_sentences(text: str) -> int:
    """``len(split_sentences(text))``."""
    return len(split_sentences(text))


RELATIONS: dict[str, Callable[[int, int], bool]] = {
    "less than": operator.lt,
    "at most": operator.le,
    "at least": operator.ge,
    "exactly": operator.eq,
}


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


def _sentence(phrase: str) -> str:
    """``phrase`` stripped, with a period added unless it ends in punctuation already."""
    phrase = phrase.strip()
    return phrase if phrase[-1] in ".!?" else phrase + "."


def _whole_word(word: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


# ---- the checkers: strict, on the answer as given (IFEval's check_following) -------------------------


def _number_words(a: str, p: dict) -> bool:
    return RELATIONS[p["relation"]](count_words(a), p["num_words"])


def _number_sentences(a: str, p: dict) -> bool:
    return RELATIONS[p["relation"]](count_sentences(a), p["num_sentences"])


def _number_paragraphs(a: str, p: dict) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", a)
    n = len(paragraphs)
    for i, para in enumerate(paragraphs):
        if not para.strip():
            if i in (0, len(paragraphs) - 1):
                n -= 1
            else:
                return False
    return n == p["num_paragraphs"]


BULLET = re.compile(r"^[ \t]*[*-][ \t]+\S", re.MULTILINE)


def _bullets(a: str, p: dict) -> bool:
    return len(BULLET.findall(a)) == p["num_bullets"]


def _highlights(a: str, p: dict) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n*]*\*", a) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n*]*\*\*", a) if h.removeprefix("**").removesuffix("**").strip())
    return n >= p["num_highlights"]


def _existence(a: str, p: dict) -> bool:
    return all(_whole_word(k).search(a) for k in p["keywords"])


def _frequency(a: str, p: dict) -> bool:
    return RELATIONS[p["relation"]](len(_whole_word(p["keyword"]).findall(a)), p["frequency"])


def _forbidden(a: str, p: dict) -> bool:
    return not any(_whole_word(w).search(a) for w in p["forbidden_words"])


def _json(a: str, p: dict) -> bool:
    v = a.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        v = v.removeprefix(fence)
    v = v.removesuffix("```").strip()
    try:
        json.loads(v)
    except ValueError:
        return False
    return True


def _end(a: str, p: dict) -> bool:
    return a.strip().lower().endswith(p["end_phrase"].strip().lower())


def _title(a: str, p: dict) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", a))


def _quotation(a: str, p: dict) -> bool:
    v = a.strip()
    return len(v) > 1 and v[0] == '"' and v[-1] == '"'


def _postscript(a: str, p: dict) -> bool:
    marker = p["postscript_marker"].strip()
    if marker == "P.P.S":
        pattern = r"^\s*p\.\s?p\.\s?s"
    elif marker == "P.S.":
        pattern = r"^\s*p\.\s?s\."
    else:
        pattern = r"^\s*" + re.escape(marker.lower())
    return re.search(pattern, a.lower(), flags=re.MULTILINE) is not None


@dataclass(frozen=True)
class Kind:
    """One constraint kind: its IFEval id, its parameters (name -> type: int, str or list of str), the
    phrase it adds to an instruction, and its strict checker ``check(answer, params) -> bool``."""

    id: str
    params: Mapping[str, type]
    phrase: Callable[[dict], str]
    check: Callable[[str, dict], bool]


_KINDS = [
    Kind(
        "length_constraints:number_words",
        {"relation": str, "num_words": int},
        lambda p: f"Answer with {p['relation']} {_n(p['num_words'], 'word')}.",
        _number_words,
    ),
    Kind(
        "length_constraints:number_sentences",
        {"relation": str, "num_sentences": int},
        lambda p: f"Your response should contain {p['relation']} {_n(p['num_sentences'], 'sentence')}.",
        _number_sentences,
    ),
    Kind(
        "length_constraints:number_paragraphs",
        {"num_paragraphs": int},
        lambda p: (
            f"There should be {_n(p['num_paragraphs'], 'paragraph')}. Paragraphs are separated with "
            "the markdown divider: ***"
        ),
        _number_paragraphs,
    ),
    Kind(
        "detectable_format:number_bullet_lists",
        {"num_bullets": int},
        lambda p: (
            f"Your answer must contain exactly {_n(p['num_bullets'], 'bullet point')}. Use the markdown "
            "bullet points such as:\n* This is point 1.\n* This is point 2"
        ),
        _bullets,
    ),
    Kind(
        "detectable_format:number_highlighted_sections",
        {"num_highlights": int},
        lambda p: (
            f"Highlight at least {_n(p['num_highlights'], 'section')} in your answer with markdown, i.e. "
            "*highlighted section*."
        ),
        _highlights,
    ),
    Kind(
        "keywords:existence",
        {"keywords": list},
        lambda p: (
            f"Include keywords {', '.join(p['keywords'])} in the response."
            if len(p["keywords"]) > 1
            else f"Include the keyword {p['keywords'][0]} in the response."
        ),
        _existence,
    ),
    Kind(
        "keywords:frequency",
        {"keyword": str, "relation": str, "frequency": int},
        lambda p: (
            f"In your response, the word {p['keyword']} should appear {p['relation']} "
            f"{_n(p['frequency'], 'time')}."
        ),
        _frequency,
    ),
    Kind(
        "keywords:forbidden_words",
        {"forbidden_words": list},
        lambda p: (
            f"Do not include keywords {', '.join(p['forbidden_words'])} in the response."
            if len(p["forbidden_words"]) > 1
            else f"Do not include the word {p['forbidden_words'][0]} in the response."
        ),
        _forbidden,
    ),
    Kind(
        "change_case:english_lowercase",
        {},
        lambda p: (
            "Your entire response should be in English, and in all lowercase letters. No capital "
            "letters are allowed."
        ),
        lambda a, p: a == a.lower(),
    ),
    Kind(
        "change_case:english_capital",
        {},
        lambda p: "Your entire response should be in English, and in all capital letters.",
        lambda a, p: a.isupper(),
    ),
    Kind(
        "detectable_format:json_format",
        {},
        lambda p: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
        _json,
    ),
    Kind(
        "detectable_format:title",
        {},
        lambda p: (
            "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."
        ),
        _title,
    ),
    Kind(
        "startend:end_checker",
        {"end_phrase": str},
        lambda p: (
            f"Finish your response with this exact phrase {_sentence(p['end_phrase'])} No other words "
            "should follow this phrase."
        ),
        _end,
    ),
    Kind(
        "startend:quotation",
        {},
        lambda p: "Wrap your entire response with double quotation marks.",
        _quotation,
    ),
    Kind(
        "punctuation:no_comma",
        {},
        lambda p: "In your entire response, refrain from the use of any commas.",
        lambda a, p: "," not in a,
    ),
    Kind(
        "detectable_content:postscript",
        {"postscript_marker": str},
        lambda p: (
            f"At the end of your response, please explicitly add a postscript starting with "
            f"{p['postscript_marker']}"
        ),
        _postscript,
    ),
]
KINDS: dict[str, Kind] = {k.id: k for k in _KINDS}
"""The constraint kinds by IFEval instruction id."""


# ---- constraints ---------------------------------------------------------------------------------------


def _describe(v) -> str:
    return "null" if v is None else f"{type(v).__name__} {v!r}"


def _validated(kind: str, params) -> dict:
    """A copy of ``params`` checked against ``kind``'s parameters; null values are dropped (IFEval's own
    kwargs, and rows read back from parquet, carry every other kind's parameters as null)."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise HeredityError(f"unknown constraint kind {kind!r}; use one of {', '.join(KINDS)}")
    spec = KINDS[kind].params
    if not isinstance(params, Mapping):
        raise HeredityError(
            f"constraint {kind}: params is {_describe(params)}; give an object {{name: value}}"
        )
    given = {k: v for k, v in params.items() if v is not None}
    want = ", ".join(spec) or "none"
    extra = sorted(set(given) - set(spec), key=str)
    if extra:
        raise HeredityError(f"constraint {kind}: unknown parameter {extra[0]!r}; its parameters are {want}")
    out: dict = {}
    for name, typ in spec.items():
        if name not in given:
            raise HeredityError(
                f"constraint {kind}: parameter {name!r} is missing; its parameters are {want}"
            )
        v = given[name]
        if name == "relation":
            if v not in RELATIONS:
                raise HeredityError(
                    f"constraint {kind}: relation is {_describe(v)}; use one of {', '.join(RELATIONS)}"
                )
        elif typ is int:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HeredityError(f"constraint {kind}: {name} is {_describe(v)}; give a whole number >= 1")
        elif typ is str:
            if not isinstance(v, str) or not v.strip():
                raise HeredityError(f"constraint {kind}: {name} is {_describe(v)}; give some text")
        elif (
            not isinstance(v, (list, tuple)) or not v or not all(isinstance(w, str) and w.strip() for w in v)
        ):
            raise HeredityError(
                f"constraint {kind}: {name} is {_describe(v)}; give a non-empty list of words"
            )
        out[name] = list(v) if typ is list else v
    return out


@dataclass(frozen=True)
class Constraint:
    """A constraint kind (an id in ``KINDS``) with its parameters, checked on creation (a bad kind or
    parameter is a ``HeredityError`` naming it)."""

    kind: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "params", _validated(self.kind, self.params))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def text(self) -> str:
        """The phrase appended to an instruction, in IFEval's words."""
        return KINDS[self.kind].phrase(self.params)

    def to_dict(self) -> dict:
        """``{"kind": ..., "params": {...}}``, JSON-ready; ``Constraint.from_dict`` reads it back."""
        return {
            "kind": self.kind,
            "params": {k: list(v) if isinstance(v, list) else v for k, v in self.params.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Constraint:
        """The constraint serialized by ``to_dict`` (params may be absent for kinds without any)."""
        if not isinstance(d, Mapping) or "kind" not in d:
            raise HeredityError(
                f'a constraint is {_describe(d)}; write it as {{"kind": <IFEval id>, "params": {{...}}}}'
            )
        return cls(d["kind"], d.get("params") or {})


def as_constraint(c: Constraint | Mapping) -> Constraint:
    """``c`` itself, or the constraint a ``to_dict`` mapping describes."""
    return c if isinstance(c, Constraint) else Constraint.from_dict(c)


def loose_variants(answer: str) -> list[str]:
    """IFEval's 8 loose variants, in its order: the answer; without ``*``; without its first line, its last
    line, both (the rest stripped); and those three without ``*``."""
    lines = answer.split("\n")
    first, last, both = (
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    )
    return [
        answer,
        answer.replace("*", ""),
        first,
        last,
        both,
        *(v.replace("*", "") for v in (first, last, both)),
    ]


def check(constraint: Constraint | Mapping, answer: str, loose: bool = False) -> bool:
    """Whether ``answer`` follows ``constraint``: strictly, the answer is not blank and passes as it is;
    ``loose``, some non-blank one of its ``loose_variants`` passes (IFEval's definitions)."""
    c = as_constraint(constraint)
    checker = KINDS[c.kind].check
    return any(v.strip() and checker(v, c.params) for v in (loose_variants(answer) if loose else [answer]))


def score_answer(row: Mapping, answer: str) -> dict:
    """IFEval's grades of ``answer`` to ``row`` (a ``constraint_rows`` row, or any mapping with a non-empty
    ``constraints`` list): ``strict`` / ``loose`` whether it follows every constraint (prompt level), and
    ``per_constraint``, one ``{"kind", "strict", "loose"}`` per constraint in order (instruction level). A
    strict pass is always a loose pass."""
    cs = [as_constraint(c) for c in row["constraints"]]
    if not cs:
        raise HeredityError("the row has no constraints; give at least one to grade an answer against")
    per = [{"kind": c.kind, "strict": check(c, answer), "loose": check(c, answer, loose=True)} for c in cs]
    return {
        "strict": all(p["strict"] for p in per),
        "loose": all(p["loose"] for p in per),
        "per_constraint": per,
    }


def ifeval_accuracy(rows: Sequence[Mapping], answers: Sequence[str]) -> dict:
    """IFEval's four accuracies over ``rows`` and their ``answers`` (one each): ``prompt_strict`` /
    ``prompt_loose`` (the fraction of answers following all their constraints) and ``instruction_strict`` /
    ``instruction_loose`` (the fraction of all constraints followed), with the counts ``prompts`` and
    ``instructions`` and ``per_kind``: kind -> {"n", "strict", "loose"} (fraction of that kind followed)."""
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} rows but {len(answers)} answers; give one answer per row")
    if not rows:
        raise ValueError("no rows to score")
    scores = [score_answer(r, a) for r, a in zip(rows, answers, strict=True)]
    per = [p for s in scores for p in s["per_constraint"]]
    kinds = Counter(p["kind"] for p in per)
    return {
        "prompt_strict": sum(s["strict"] for s in scores) / len(scores),
        "prompt_loose": sum(s["loose"] for s in scores) / len(scores),
        "instruction_strict": sum(p["strict"] for p in per) / len(per),
        "instruction_loose": sum(p["loose"] for p in per) / len(per),
        "prompts": len(scores),
        "instructions": len(per),
        "per_kind": {
            k: {
                "n": n,
                "strict": sum(p["strict"] for p in per if p["kind"] == k) / n,
                "loose": sum(p["loose"] for p in per if p["kind"] == k) / n,
            }
            for k, n in sorted(kinds.items())
        },
    }


# ---- pairs of kinds: which can go together, which are held out ----------------------------------------

JSON = "detectable_format:json_format"
_ALWAYS_JSON = {"keywords:existence", "keywords:forbidden_words"}
CONFLICTS: frozenset[frozenset[str]] = frozenset(
    {frozenset({JSON, k}) for k in KINDS if k != JSON and k not in _ALWAYS_JSON}
    | {
        frozenset(p)
        for p in (
            ("change_case:english_lowercase", "change_case:english_capital"),
            ("startend:quotation", "detectable_format:title"),
            ("startend:quotation", "startend:end_checker"),
            ("length_constraints:number_paragraphs", "length_constraints:number_sentences"),
        )
    }
)
"""Pairs of kinds never given together: IFEval's conflicts (JSON goes only with keywords; lowercase and
capitals; a quoted answer and a title; paragraphs and sentence counts) and one it misses (a quoted answer
cannot end with a phrase)."""

HELD_OUT_FRACTION = 0.25


def compatible_pairs() -> list[tuple[str, str]]:
    """Every unordered pair of distinct kinds not in ``CONFLICTS``, as sorted tuples, sorted."""
    return [p for p in combinations(sorted(KINDS), 2) if frozenset(p) not in CONFLICTS]


def pair_split(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """The compatible pairs cut into ``"train"`` and ``"held_out"`` (a quarter), both sorted; the same for a
    seed on every machine. Each kind keeps at least half its compatible pairs (rounded up) in train, so
    every kind is combined with some partner in training."""
    pairs = compatible_pairs()
    order = list(pairs)
    random.Random(f"constraint-pairs:{seed}").shuffle(order)
    degree = Counter(k for p in pairs for k in p)
    left = degree.copy()
    target = round(len(pairs) * HELD_OUT_FRACTION)
    held: list[tuple[str, str]] = []
    for a, b in order:
        if len(held) == target:
            break
        if all(left[k] - 1 >= (degree[k] + 1) // 2 for k in (a, b)):
            held.append((a, b))
            left[a] -= 1
            left[b] -= 1
    return {"train": sorted(set(pairs) - set(held)), "held_out": sorted(held)}


def held_out_pairs(seed: int = 0) -> frozenset[tuple[str, str]]:
    """The pairs of kinds (sorted tuples) that only ``val`` and ``eval`` rows combine (``pair_split``)."""
    return frozenset(pair_split(seed)["held_out"])


def kind_pair(row: Mapping) -> tuple[str, str] | None:
    """The sorted pair of kinds of a two-constraint row; None for a row with one constraint."""
    kinds = sorted(as_constraint(c).kind for c in row["constraints"])
    return (kinds[0], kinds[1]) if len(kinds) == 2 else None


# ---- the generator -------------------------------------------------------------------------------------

TEMPLATES = [
    "Write a short essay about {}.",
    "Describe {} to someone from another century.",
    "Explain what makes {} worth learning about.",
    "Write a short story about {}.",
    "List some reasons to care about {}.",
    "Write a blog post about {}.",
    "Give advice to someone who wants to learn about {}.",
    "Write a letter to a friend about {}.",
    "Summarize what everyone should know about {}.",
    "Write a poem about {}.",
    "Write a short speech about {}.",
    "Write a diary entry about a day spent with {}.",
]
"""Base tasks, shared by all parts (the subjects are what is split)."""

SUBJECTS = [
    "the ocean", "city parks", "learning a new language", "winter mornings", "public libraries",
    "bicycles", "honeybees", "the moon", "old maps", "street food", "volcanoes", "rain forests", "chess",
    "jazz", "bread", "solar power", "tea", "mountains", "trains", "coral reefs", "recycling", "gardening",
    "deserts", "lighthouses", "clocks", "dinosaurs", "kites", "friendship", "sleep", "penguins", "bridges",
    "museums", "rivers", "coffee", "robots", "the printing press", "autumn leaves", "snow",
    "hot air balloons", "board games", "farmers markets", "photography", "the human heart", "islands",
    "owls", "paper", "music lessons", "camping", "the night sky", "wind", "apples", "running",
    "cooking at home", "handwritten letters", "elephants", "castles", "glaciers", "thunderstorms", "whales",
    "farms", "cats", "rainbows", "spiders", "bamboo", "comets", "sailing", "pottery", "lanterns",
    "waterfalls", "ants", "puzzles", "rice", "umbrellas", "the alphabet", "bees", "tigers", "caves",
    "windmills", "origami", "maple syrup",
]  # fmt: skip
"""Subjects of the base tasks, split 60/20/20 into the train / val / eval parts (``tasks._split``)."""

SUBJECT_SPLIT_SEED = 31
KEYWORDS = [
    "adventure", "balance", "bright", "careful", "challenge", "change", "color", "community", "curious",
    "energy", "family", "future", "gentle", "habit", "history", "journey", "local", "memory", "morning",
    "nature", "patience", "practice", "quiet", "science", "season", "shadow", "silence", "simple", "story",
    "surprise", "travel", "window", "wonder", "weather",
]  # fmt: skip
"""Words to include (keywords:existence, keywords:frequency)."""
FORBIDDEN = [
    "very", "really", "thing", "things", "good", "great", "important", "many", "also", "just", "people",
    "nice", "lot", "always", "never", "everything", "interesting", "beautiful", "amazing", "special",
]  # fmt: skip
"""Words to avoid (keywords:forbidden_words): common words a writer reaches for, none in ``KEYWORDS`` or
``END_PHRASES``, so no row asks for and forbids the same word."""
END_PHRASES = [
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Any other questions?",
    "Thank you for reading.",
    "That is all for now.",
    "Have a wonderful day.",
]
"""Fixed endings (startend:end_checker); none holds a comma, so each goes with punctuation:no_comma."""
POSTSCRIPT_MARKERS = ["P.S.", "P.P.S"]


def _draw(kind: str, rng: random.Random, used: set[str]) -> Constraint:
    """A constraint of ``kind`` with parameters drawn for the generator; keywords already in ``used`` are
    not drawn again (and are added to it)."""

    def words(bank: list[str], k: int) -> list[str]:
        picked = sorted(rng.sample([w for w in bank if w not in used], k))
        used.update(picked)
        return picked

    match kind:
        case "length_constraints:number_words":
            rel = rng.choice(["at least", "at most"])
            n = rng.choice([10, 20, 30, 50, 80] if rel == "at least" else [20, 30, 50, 80, 100])
            p = {"relation": rel, "num_words": n}
        case "length_constraints:number_sentences":
            rel = rng.choice(["exactly", "at least"])
            p = {
                "relation": rel,
                "num_sentences": rng.randint(1, 5) if rel == "exactly" else rng.randint(2, 6),
            }
        case "length_constraints:number_paragraphs":
            p = {"num_paragraphs": rng.randint(2, 4)}
        case "detectable_format:number_bullet_lists":
            p = {"num_bullets": rng.randint(2, 6)}
        case "detectable_format:number_highlighted_sections":
            p = {"num_highlights": rng.randint(1, 3)}
        case "keywords:existence":
            p = {"keywords": words(KEYWORDS, rng.randint(1, 2))}
        case "keywords:frequency":
            rel = rng.choice(["at least", "less than"])
            p = {"keyword": words(KEYWORDS, 1)[0], "relation": rel, "frequency": rng.randint(2, 3)}
        case "keywords:forbidden_words":
            p = {"forbidden_words": words(FORBIDDEN, rng.randint(1, 2))}
        case "startend:end_checker":
            p = {"end_phrase": rng.choice(END_PHRASES)}
        case "detectable_content:postscript":
            p = {"postscript_marker": rng.choice(POSTSCRIPT_MARKERS)}
        case _:
            p = {}
    return Constraint(kind, p)


def subjects(part: str) -> list[str]:
    """The subjects of ``part`` ("train", "val", "eval"/"test"): disjoint, together all of ``SUBJECTS``."""
    return _split(SUBJECTS, part, SUBJECT_SPLIT_SEED)


def constraint_rows(
    n: int, part: str, seed: int = 0, combos: Sequence[int] = (1, 2), split_seed: int = 0
) -> list[dict]:
    """``n`` distinct rows ``{"prompt", "constraints", "base"}`` of ``part`` ("train", "val", "eval"/"test").

    ``base`` is a writing task (a template on a subject of the part), ``constraints`` the serialized
    constraints (``Constraint.to_dict``), ``prompt`` the base followed by their phrases. Each row draws its
    number of constraints from ``combos`` (1 and/or 2): one constraint is any kind; two are a pair from
    ``pair_split(split_seed)``: a training pair in ``train``, a held-out pair in ``val`` and ``eval``, in a
    random order. Give train and eval rows the same ``split_seed``; ``seed`` changes only the rows drawn.
    The same arguments give the same rows.
    """
    p = _part(part)
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if not combos or any(k not in (1, 2) for k in combos):
        raise ValueError(f"combos holds numbers of constraints per row, each 1 or 2, not {list(combos)}")
    pairs = pair_split(split_seed)["train" if p == "train" else "held_out"]
    subs, kinds = subjects(p), sorted(KINDS)
    rng = random.Random(f"constraint-rows:{p}:{seed}")
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(20 * n + 1000):
        if len(rows) == n:
            break
        chosen = [rng.choice(kinds)] if rng.choice(combos) == 1 else rng.sample(rng.choice(pairs), 2)
        base = rng.choice(TEMPLATES).format(rng.choice(subs))
        used: set[str] = set()
        cs = [_draw(k, rng, used) for k in chosen]
        prompt = " ".join([base, *(c.text() for c in cs)])
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "constraints": [c.to_dict() for c in cs], "base": base})
    if len(rows) < n:
        raise ValueError(f"part {p!r} gave only {len(rows)} distinct constraint rows of the {n} asked for")
    return rows
