"""Retrieval corpora whose relevance labels are exact, and the passages a writer is grounded on.

An ``IRCorpus`` is what an information-retrieval evaluation needs: documents, queries, the relevant documents
of each query (qrels), a topic per query (for per-topic scores) and the task instruction that prefixes its
queries. Built here:

* the facts corpus: the fictional fact base (``data.facts``): one statement per fact is a document, one
  question per fact a query; its only relevant document is its own fact. The same entity's other facts
  are natural hard negatives (``swap_target``: for a capital or founding-year query, the same entity's
  other one of the two, the document an attribute-swapping writer would teach a student to retrieve).
* the documentation corpus: CPython's own documentation topics (``pydoc_data.topics``), cut into
  sections at their underlined headings; a section's first paragraphs are a document, a question written
  from its heading the query.

``split_passages`` cuts both sources into a training part (passages a writer is grounded on, and the
program-written "real data" pairs) and an evaluation part, disjoint by entity and by documentation topic, so
no query or document of the evaluation is ever trained on. A user's own corpus in the BEIR layout is read by
``data.beir.read_beir`` into the same ``IRCorpus``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from heredity.data.facts import QUESTIONS, STATEMENTS, Fact, make_facts, statements
from heredity.engine.retrieval import IRCorpus

FACTS_INSTRUCTION = "Given a question about a country, retrieve the statement that answers it"
PYDOC_INSTRUCTION = "Given a question about Python, retrieve the documentation section that answers it"
PYDOC_QUESTIONS = [
    "What does the Python documentation say about {h}?",
    "Explain {h} in Python.",
    "How does {h} work in Python?",
]
# the attribute pairs an attribute-swapping writer confuses
SWAPPED = ("capital", "founded")


@dataclass(frozen=True)
class Passage:
    """A training passage: what a writer is shown, with its topic and, for a fact, the fact itself."""

    id: str
    text: str
    topic: str
    entity: str = ""
    question: str = ""  # a program-written query whose answer the passage is ("real data" pairs)


def fact_passages(facts: list[Fact], seed: int, paraphrased: bool = False) -> list[Passage]:
    """One passage per fact: its plain statement, or (``paraphrased``) one of its wordings drawn at random,
    so that a query's words ("capital", "founded") need not occur in its document."""
    rng = random.Random(seed)
    n = len(STATEMENTS["capital"]) if paraphrased else 1
    out = []
    for i, f in enumerate(facts):
        wordings = statements([f], n, seed + i)
        text = rng.choice(wordings)["text"] if paraphrased else wordings[0]["text"]
        q = rng.choice(QUESTIONS[f.attribute]).format(e=f.entity)
        out.append(Passage(f"{f.entity}/{f.attribute}", text, f"facts/{f.attribute}", f.entity, q))
    return out


def pydoc_sections(max_chars: int = 600) -> list[tuple[str, str, str]]:
    """(topic key, heading, text) for every section of CPython's documentation topics whose heading occurs
    once and whose text is at least 80 characters; the text is the section's first paragraphs, cut at a
    paragraph end before ``max_chars`` where one is."""
    from pydoc_data.topics import topics

    found = []
    for key in sorted(topics):
        parts = re.split(r"\n([^\n]+)\n[=*\-~^]{3,}\n", "\n" + topics[key])
        for heading, body in zip(parts[1::2], parts[2::2], strict=True):
            text = re.sub(r"\s+", " ", body).strip()
            if len(text) > max_chars:
                cut = text.rfind(". ", 0, max_chars)
                text = text[: cut + 1] if cut > 80 else text[:max_chars]
            found.append((key, heading.strip(), text))
    counts: dict[str, int] = {}
    for _, h, _ in found:
        counts[h] = counts.get(h, 0) + 1
    return [(k, h, t) for k, h, t in found if counts[h] == 1 and len(t) >= 80]


def pydoc_passages(keys: set[str], seed: int, max_chars: int = 600) -> list[Passage]:
    rng = random.Random(seed)
    return [
        Passage(f"{k}/{h}", t, "pydoc", k, rng.choice(PYDOC_QUESTIONS).format(h=h))
        for k, h, t in pydoc_sections(max_chars)
        if k in keys
    ]


def split_passages(
    train_entities: int, eval_entities: int, pydoc_eval_share: float = 0.5, seed: int = 0
) -> tuple[list[Passage], list[Passage]]:
    """(training passages, evaluation passages): the fact base's entities and the documentation's topics
    are each split once, so the two parts share no entity, no topic, hence no query and no document. The
    training facts are plain statements; the evaluation's are worded at random among the paraphrases."""
    facts = make_facts(train_entities + eval_entities, seed)
    train_f, eval_f = facts[: 3 * train_entities], facts[3 * train_entities :]
    keys = sorted({k for k, _, _ in pydoc_sections()})
    random.Random(seed).shuffle(keys)
    n_eval = round(len(keys) * pydoc_eval_share)
    eval_keys, train_keys = set(keys[:n_eval]), set(keys[n_eval:])
    train = fact_passages(train_f, seed) + pydoc_passages(train_keys, seed)
    evaluation = fact_passages(eval_f, seed + 1, paraphrased=True) + pydoc_passages(eval_keys, seed + 1)
    return train, evaluation


def eval_corpora(passages: list[Passage]) -> list[IRCorpus]:
    """The evaluation passages as two corpora: the facts and the documentation sections."""
    facts = [p for p in passages if p.topic.startswith("facts/")]
    docs = [p for p in passages if p.topic == "pydoc"]
    by_entity: dict[tuple[str, str], str] = {(p.entity, p.topic): p.id for p in facts}
    swap = {}
    for p in facts:
        attr = p.topic.split("/", 1)[1]
        if attr in SWAPPED:
            other = SWAPPED[1 - SWAPPED.index(attr)]
            swap["q/" + p.id] = by_entity[(p.entity, f"facts/{other}")]
    out = [
        IRCorpus(
            "facts",
            {p.id: p.text for p in facts},
            {"q/" + p.id: p.question for p in facts},
            {"q/" + p.id: {p.id} for p in facts},
            {"q/" + p.id: p.topic for p in facts},
            FACTS_INSTRUCTION,
            swap,
        ),
        IRCorpus(
            "pydoc",
            {p.id: p.text for p in docs},
            {"q/" + p.id: p.question for p in docs},
            {"q/" + p.id: {p.id} for p in docs},
            {"q/" + p.id: "pydoc" for p in docs},
            PYDOC_INSTRUCTION,
        ),
    ]
    return [c for c in out if c.queries]


def program_pairs(passages: list[Passage], seed: int = 0) -> list[dict]:
    """ "Real data" written by program from the corpora's structure: each passage's own question as the
    query, the passage as the positive, and as hard negative the same entity's next fact (facts) or another
    section of the same documentation topic (else a random other section)."""
    rng = random.Random(seed)
    groups: dict[str, list[Passage]] = {}
    for p in passages:
        groups.setdefault(p.entity, []).append(p)
    rows = []
    for p in passages:
        sibs = [s for s in groups[p.entity] if s.id != p.id] or [s for s in passages if s.id != p.id]
        neg = rng.choice(sibs)
        rows.append(
            {
                "task": FACTS_INSTRUCTION if p.topic.startswith("facts/") else PYDOC_INSTRUCTION,
                "query": p.question,
                "positive": p.text,
                "hard_negative": neg.text,
                "topic": p.topic,
                "passage": p.id,
            }
        )
    return rows
