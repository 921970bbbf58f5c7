"""Facets of a conversation, extracted by a model told to leave private details out (Clio's facets).

Per conversation: ``summary`` (what the user asked for, one sentence), ``topic`` (a few words), ``language``,
and ``concern`` (the model's probability that the conversation involves harm or abuse; flagged above 0.5).
Extraction is batched over conversations and memoized per conversation: each result is kept under
``HEREDITY_HOME/cache/facets/`` keyed by the model, the prompts and the (scrubbed) conversation, so adding
conversations only computes the new ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

PROMPTS = {
    "summary": (
        "Summarize in one short sentence what the user asked the assistant for. Do not include names, "
        "contact details or any other private information.\n\n{conv}"
    ),
    "topic": "In two to four words, what is the topic of this conversation?\n\n{conv}",
    "language": "In which language does the user write? Answer with the name of the language only.\n\n{conv}",
    "concern": (
        "Does this conversation involve harm, abuse, violence or illegal activity? "
        "Answer Yes or No.\n\n{conv}"
    ),
}
VERSION = "facets-v1"
MAX_TOKENS = {"summary": 40, "topic": 10, "language": 4}


def render(messages: Sequence[dict], max_chars: int = 1500) -> str:
    """A conversation as plain text for a facet prompt, cut to ``max_chars``."""
    text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages if m["role"] != "system")
    return text if len(text) <= max_chars else text[:max_chars] + " …"


def _key(model_id: str, text: str) -> str:
    return hashlib.sha256(json.dumps([VERSION, model_id, PROMPTS, MAX_TOKENS, text]).encode()).hexdigest()


def _clean(s: str, limit: int) -> str:
    s = " ".join(s.strip().split())
    return s[:limit].strip(" \"'")


def extract(
    store, model_id: str, texts: Sequence[str], batch_size: int = 32, progress: bool = False
) -> list[dict]:
    """Facets of each rendered conversation; cached ones are read, the rest computed in batches and cached."""
    from heredity.engine import SampleConfig, sample

    cache = Path(store.home) / "cache" / "facets"
    cache.mkdir(parents=True, exist_ok=True)
    keys = [_key(model_id, t) for t in texts]
    out: list[dict | None] = []
    for k in keys:
        f = cache / f"{k}.json"
        out.append(json.loads(f.read_text()) if f.exists() else None)
    todo = [i for i, r in enumerate(out) if r is None]
    if todo:
        model, tok = open_model(store, model_id)
        res: dict[int, dict] = {i: {} for i in todo}
        for facet, limit in MAX_TOKENS.items():
            comps = sample(
                model,
                tok,
                [PROMPTS[facet].format(conv=texts[i]) for i in todo],
                SampleConfig(temperature=0, max_new_tokens=limit, batch_size=batch_size, stop=["\n"]),
                progress=progress,
            )
            for i, c in zip(todo, comps, strict=True):
                res[i][facet] = _clean(c.text, 300)
        res_concern = concern_probability(model, tok, [texts[i] for i in todo])
        for i, p in zip(todo, res_concern, strict=True):
            res[i]["concern_p"] = p
            res[i]["concern"] = p > 0.5
        for i in todo:
            tmp = cache / f".{keys[i]}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(res[i]))
            tmp.replace(cache / f"{keys[i]}.json")  # atomic: a reader never sees half a file
            out[i] = res[i]
    return [dict(r) for r in out]  # type: ignore[arg-type]


def open_model(store, spec: str):
    """(model, tokenizer): a stored/bundled model loaded here, or an OpenAI-compatible endpoint (tokenizer
    None)."""
    from heredity.models import RemoteModel, load, parse_spec

    s = parse_spec(spec)
    if s.kind == "openai":
        return RemoteModel(s.value, s.base_url), None
    return load(spec, store)


def concern_probability(model, tokenizer, texts: Sequence[str]) -> list[float]:
    """p(Yes) / (p(Yes) + p(No)) as the answer to the concern question; from an endpoint (no log-probs here),
    1.0 if its answer starts with yes, else 0.0."""
    from heredity.engine.logprobs import logprobs

    if not texts:
        return []
    if tokenizer is None:
        from heredity.engine import SampleConfig, sample

        comps = sample(
            model,
            None,
            [PROMPTS["concern"].format(conv=t) for t in texts],
            SampleConfig(temperature=0, max_new_tokens=3),
            progress=False,
        )
        return [1.0 if c.text.strip().lower().startswith("yes") else 0.0 for c in comps]
    prompts = [PROMPTS["concern"].format(conv=t) for t in texts for _ in (0, 1)]
    lps = [sum(x) for x in logprobs(model, tokenizer, prompts, ["Yes", "No"] * len(texts), chat=True)]
    out = []
    for i in range(len(texts)):
        y, n = lps[2 * i], lps[2 * i + 1]
        out.append(1 / (1 + math.exp(n - y)))
    return out
