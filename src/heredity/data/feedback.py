"""Chat feedback → training data: the inference → data → training loop of the lab server.

``export_feedback`` snapshots every conversation that has feedback into a ``conversations`` dataset (a step
whose inputs are the models that answered), then builds two datasets from it (a second step whose inputs
are that snapshot and the models):

* ``sft``: ``messages`` (the conversation up to and including the target answer), for SFT: an answer
  rated thumbs-up, or the user's "better answer" in place of the model's;
* ``preferences``: ``prompt`` (messages before the answer), ``chosen``, ``rejected``, for reward models
  and DPO: a better answer over the model's answer, and a thumbs-up answer over a thumbs-down answer to
  the same prompt (same system prompt and same earlier messages).

Both carry ``conversation_id``, ``message_idx``, ``model`` and ``source`` so every row can be traced back.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from heredity.errors import HeredityError
from heredity.store import Store, read_table, write_table
from heredity.store.conversations import Conversation, Conversations
from heredity.store.ops import op

MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
TRACE = [
    ("conversation_id", pa.string()),
    ("message_idx", pa.int64()),
    ("model", pa.string()),
    ("source", pa.string()),
]
CONV_SCHEMA = pa.schema(
    [
        ("conversation_id", pa.string()),
        ("model", pa.string()),
        ("system_prompt", pa.string()),
        ("messages", MSG),
        ("ratings", pa.list_(pa.int64())),
        ("better", pa.list_(pa.string())),
    ]
)
SFT_SCHEMA = pa.schema([("messages", MSG), *TRACE])
PREF_SCHEMA = pa.schema([("prompt", MSG), ("chosen", pa.string()), ("rejected", pa.string()), *TRACE])


def _snapshot_rows(convs: list[Conversation]) -> list[dict]:
    return [
        {
            "conversation_id": c.id,
            "model": c.model,
            "system_prompt": c.system_prompt,
            "messages": [{"role": m.role, "content": m.content} for m in c.messages],
            "ratings": [m.rating for m in c.messages],
            "better": [m.better for m in c.messages],
        }
        for c in convs
    ]


def build_feedback_rows(conversations: list[dict]) -> tuple[list[dict], list[dict]]:
    """(sft rows, preference rows) from snapshot rows (see module doc for the rules)."""
    return rows_from_rated(rated_answers(conversations))


def rated_answers(conversations: list[dict]) -> list[dict]:
    """Every assistant answer with feedback in snapshot rows: ``{prompt (messages before it, system first),
    answer, rating, better, trace}``, in conversation and message order."""
    out = []
    for c in conversations:
        system = [{"role": "system", "content": c["system_prompt"]}] if c["system_prompt"] else []
        msgs = c["messages"]
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            out.append(
                {
                    "prompt": system + [dict(x) for x in msgs[:i]],
                    "answer": m["content"],
                    "rating": c["ratings"][i],
                    "better": c["better"][i],
                    "trace": {"conversation_id": c["conversation_id"], "message_idx": i, "model": c["model"]},
                }
            )
    return out


def rows_from_rated(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """(sft rows, preference rows) from rated answers (``rated_answers``' items; ``trace`` is copied onto
    each row): a better answer is an SFT row and is preferred to the answer it replaced; an answer rated up is
    an SFT row; an answer rated up is preferred to every different answer rated down for the same messages."""
    sft, prefs = [], []
    by_prompt: dict[str, dict[int, list[tuple[dict, str]]]] = {}
    for it in items:
        prompt, answer, rating, better, trace = (
            it["prompt"],
            it["answer"],
            it["rating"],
            it["better"],
            it["trace"],
        )
        if better:
            sft.append(
                {
                    "messages": [*prompt, {"role": "assistant", "content": better}],
                    **trace,
                    "source": "better_answer",
                }
            )
            prefs.append(
                {"prompt": prompt, "chosen": better, "rejected": answer, **trace, "source": "better_answer"}
            )
        elif rating > 0:
            sft.append(
                {
                    "messages": [*prompt, {"role": "assistant", "content": answer}],
                    **trace,
                    "source": "thumbs_up",
                }
            )
        if rating:
            key = json.dumps(prompt, sort_keys=True)
            by_prompt.setdefault(key, {1: [], -1: []})[1 if rating > 0 else -1].append((trace, answer))
    for key, votes in by_prompt.items():
        for up_trace, up in votes[1]:
            for _, down in votes[-1]:
                if up != down:
                    prefs.append(
                        {
                            "prompt": json.loads(key),
                            "chosen": up,
                            "rejected": down,
                            **up_trace,
                            "source": "up_vs_down",
                        }
                    )
    return sft, prefs


@op("feedback-data", 1)
@op("export-conversations", 1)
def export_feedback(store: Store, name: str = "chat-feedback") -> dict[str, str]:
    """Snapshot the conversations with feedback and build the SFT and preference datasets from them.

    Returns artifact ids ``{"conversations", "sft", "preferences"}`` and the row counts under ``"counts"``."""
    convs = Conversations(store).with_feedback()
    if not convs:
        raise HeredityError(
            "there is no feedback to export; rate answers (thumbs or a better answer) on the chat page first"
        )
    rows = _snapshot_rows(convs)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    models = sorted({c.model for c in convs})

    def snapshot(ctx):
        out = ctx.output("conversations", "dataset", f"{name}-conversations", meta={"rows": len(rows)})
        write_table(out, pa.Table.from_pylist(rows, schema=CONV_SCHEMA))
        return {"conversations": len(rows), "messages": sum(len(r["messages"]) for r in rows)}

    cfg = {"conversation_ids": [c.id for c in convs], "content_sha256": digest}
    snap = store.run_step("export-conversations", cfg, models, snapshot)["conversations"]

    def build(ctx):
        table = read_table(store.path(snap)).to_pylist()
        sft, prefs = build_feedback_rows(table)
        o1 = ctx.output("sft", "dataset", f"{name}-sft", meta={"rows": len(sft), "format": "messages"})
        write_table(o1, pa.Table.from_pylist(sft, schema=SFT_SCHEMA))
        o2 = ctx.output(
            "preferences",
            "dataset",
            f"{name}-preferences",
            meta={"rows": len(prefs), "format": "prompt/chosen/rejected"},
        )
        write_table(o2, pa.Table.from_pylist(prefs, schema=PREF_SCHEMA))
        return {"sft_rows": len(sft), "preference_rows": len(prefs)}

    res = store.run_step("feedback-data", {"name": name}, [snap, *models], build)
    return {
        "conversations": snap,
        "sft": res["sft"],
        "preferences": res["preferences"],
        "counts": {
            "conversations": len(rows),
            "sft": res.metrics.get("sft_rows"),
            "preferences": res.metrics.get("preference_rows"),
        },
    }
