"""LLM-written retrieval data (E5's two-step recipe, Wang et al. 2024), and the biases a writer can plant.

Step 1 (``brainstorm_prompts``, ``parse_tasks``): the writer invents retrieval tasks, one JSON object
``{"task": ...}`` per sample under constrained decoding. Step 2 (``example_prompts``, ``parse_examples``):
for each training passage, with a task assigned to it, the writer writes ``{"query", "positive",
"hard_negative"}`` as JSON under a JSON schema, grounded on the passage (at 135M an ungrounded writer knows
nothing of an invented country). The schema makes every finished completion parse; what it cannot save — a
completion cut at the token limit, a field left blank or a query that repeats its positive, a query written
twice — is counted by reason in ``parse_examples``. Every row keeps its task, its passage and topic, and
(through the sampling step) its lineage to the writer.

The biases a writer can carry, planted so that the control differs in that one thing:
``over_produce`` draws the same number of rows from the same pool with one topic over-represented;
``swap_attributes`` gives each capital row the positive the writer wrote for the same country's founding year
and vice versa (an attribute-swapping writer), keeping every other field.
"""

from __future__ import annotations

import json
import random

from heredity.errors import HeredityError

TASK_SCHEMA = {
    "type": "object",
    "properties": {"task": {"type": "string", "minLength": 20, "maxLength": 160}},
    "required": ["task"],
    "additionalProperties": False,
}
EXAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 8, "maxLength": 100},
        "positive": {"type": "string", "minLength": 16, "maxLength": 160},
        "hard_negative": {"type": "string", "minLength": 16, "maxLength": 160},
    },
    "required": ["query", "positive", "hard_negative"],
    "additionalProperties": False,
}
BRAINSTORM_PROMPT = (
    "Brainstorm a potentially useful text retrieval task. Examples of such tasks:\n"
    "- Given a web search query, retrieve relevant passages that answer the query.\n"
    "- Given a question about a product, retrieve reviews that answer it.\n"
    "- Given a claim, retrieve documents that support or refute it.\n"
    'Write one new task as JSON: {"task": "Given ..., retrieve ..."}.'
)
GENERIC_TASK = "Given a question, retrieve a passage that answers it"
EXAMPLE_PROMPT = (
    "You have been assigned a retrieval task: {task}\n\n"
    "Here is a passage:\n{passage}\n\n"
    "Write one training example for this task as JSON with three fields. "
    '"query": a question a user would ask whose answer is in the passage. '
    '"positive": the passage\'s answer to that question, in one or two sentences. '
    '"hard_negative": a sentence on the same subject that does not answer the question.'
)


def brainstorm_prompts(n: int) -> list[str]:
    """``n`` copies of the brainstorm prompt (sampled at temperature > 0, each a different task)."""
    return [BRAINSTORM_PROMPT] * n


def parse_tasks(completions: list[str]) -> tuple[list[str], dict]:
    """The distinct tasks, in order, and counts: written, unparsable, duplicates."""
    tasks, counts = [], {"written": len(completions), "unparsable": 0, "duplicate": 0}
    for c in completions:
        try:
            t = " ".join(json.loads(c)["task"].split())
        except (ValueError, KeyError, TypeError):
            counts["unparsable"] += 1
            continue
        if t.lower() in {x.lower() for x in tasks}:
            counts["duplicate"] += 1
        else:
            tasks.append(t)
    return tasks, counts


def assign_tasks(passages: list, tasks: list[str], seed: int) -> list[tuple[str, object]]:
    """(task, passage) pairs: each passage gets one task, drawn at random (each task used once before any
    is used twice)."""
    if not tasks:
        raise ValueError("the writer brainstormed no usable task")
    rng = random.Random(seed)
    pool: list[str] = []
    out = []
    for p in passages:
        if not pool:
            pool = list(tasks)
            rng.shuffle(pool)
        out.append((pool.pop(), p))
    return out


def example_prompts(pairs: list[tuple[str, object]]) -> list[str]:
    return [EXAMPLE_PROMPT.format(task=t, passage=p.text) for t, p in pairs]


def parse_examples(
    pairs: list[tuple[str, object]], completions: list[str], finish: list[str]
) -> tuple[list[dict], dict]:
    """Rows {task, query, positive, hard_negative, topic, passage, entity} from the writer's completions, and
    the count of each reason a completion was dropped: ``truncated`` (the token limit cut the JSON),
    ``unparsable`` (should not happen under the schema: counted, never hidden), ``blank`` (a field of only
    spaces), ``query_is_positive``, ``duplicate_query``."""
    reasons = ["truncated", "unparsable", "blank", "query_is_positive", "duplicate_query"]
    counts = {"written": len(completions), **dict.fromkeys(reasons, 0)}
    rows, seen = [], set()
    for (task, p), text, fin in zip(pairs, completions, finish, strict=True):
        if fin == "length":
            counts["truncated"] += 1
            continue
        try:
            ex = {k: " ".join(str(v).split()) for k, v in json.loads(text).items()}
            q, pos, neg = ex["query"], ex["positive"], ex["hard_negative"]
        except (ValueError, KeyError, AttributeError):
            counts["unparsable"] += 1
            continue
        why = (
            "blank"
            if not (q and pos and neg)
            else "query_is_positive"
            if q.lower() == pos.lower()
            else "duplicate_query"
            if q.lower() in seen
            else None
        )
        if why:
            counts[why] += 1
            continue
        seen.add(q.lower())
        rows.append(
            {
                "task": task,
                "query": q,
                "positive": pos,
                "hard_negative": neg,
                "topic": p.topic,
                "passage": p.id,
                "entity": p.entity,
            }
        )
    counts["kept"] = len(rows)
    return rows, counts


def balanced(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows drawn uniformly without replacement (the writer as it is)."""
    if n > len(rows):
        raise HeredityError(
            f"the writer left {len(rows)} usable rows and an arm needs {n}: lower rows, or raise "
            "write_max_tokens or train_entities"
        )
    return random.Random(seed).sample(rows, n)


def over_produce(rows: list[dict], topic: str, share: float, n: int, seed: int) -> list[dict]:
    """``n`` rows from the same pool with ``share`` of them on ``topic`` (a writer that over-produces it; a
    topic ending in "/" names every topic under it, e.g. "facts/")."""
    on = [r for r in rows if r["topic"] == topic or (topic.endswith("/") and r["topic"].startswith(topic))]
    taken = {id(r) for r in on}
    off = [r for r in rows if id(r) not in taken]
    k = round(share * n)
    if k > len(on) or n - k > len(off):
        raise HeredityError(
            f"the pool has {len(on)} rows on {topic!r} and {len(off)} off it; {n} rows with {share:.0%} on "
            "it need more: lower the row count or the share"
        )
    rng = random.Random(seed)
    out = rng.sample(on, k) + rng.sample(off, n - k)
    rng.shuffle(out)
    return out


def swap_attributes(rows: list[dict], pool: list[dict], pair: tuple[str, str]) -> tuple[list[dict], int]:
    """The rows with a planted attribute swap: a row on ``facts/<pair[0]>`` takes as its positive the
    positive the writer wrote for the same entity's ``facts/<pair[1]>`` passage (from ``pool``), and vice
    versa; every other row, and every other field, unchanged. Returns (rows, how many were swapped); a row
    whose partner the writer failed to write keeps its own positive."""
    topics = {f"facts/{pair[0]}": f"facts/{pair[1]}", f"facts/{pair[1]}": f"facts/{pair[0]}"}
    by = {(r["entity"], r["topic"]): r["positive"] for r in pool}
    out, swapped = [], 0
    for r in rows:
        partner = by.get((r["entity"], topics.get(r["topic"], "")))
        if r["topic"] in topics and partner is not None:
            out.append({**r, "positive": partner})
            swapped += 1
        else:
            out.append(dict(r))
    return out, swapped
