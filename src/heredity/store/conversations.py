"""Conversations and feedback kept by the lab server, in the store's database (SQLite or PostgreSQL).

A conversation is an ordered list of messages answered by one model. Messages are only ever appended, and
an answer is written together with the user turn that asked for it (one transaction), so a request that
fails or is cut off leaves the conversation as it was. Feedback (thumbs, a better answer) attaches to one
assistant message.

Two turns written at once on one conversation: exactly one is stored, the other raises ``ConflictError`` (the
server's 409), on SQLite as on PostgreSQL. Within a process a lock per conversation serializes the check and
the write; across processes PostgreSQL's row lock does, and on SQLite (where ``SELECT ... FOR UPDATE`` is a
no-op) the unique (conversation, position) constraint refuses the second writer, which is reported as the same
conflict.
"""

from __future__ import annotations

import re
import secrets
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heredity.errors import HeredityError
from heredity.store.db import ConversationRow, FeedbackRow, MessageRow

CONV_RE = re.compile(r"^c-[0-9a-f]{16}$")


@dataclass
class Message:
    idx: int
    role: str
    content: str
    model: str | None = None
    params: dict = field(default_factory=dict)
    rating: int = 0
    better: str | None = None


@dataclass
class Conversation:
    id: str
    title: str
    model: str
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime
    messages: list[Message] = field(default_factory=list)
    user_id: str | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "user_id": self.user_id,
            "messages": [m.__dict__ for m in self.messages],
        }


def continues(stored, messages: list[dict]) -> bool:
    """Whether ``messages`` (a request's full list, system prompt included) starts with the ``stored``
    messages (anything with ``role`` and ``content``) of a conversation."""
    turn = [m for m in messages if m["role"] != "system"]
    return len(stored) <= len(turn) and all(
        (a.role, a.content) == (b["role"], b["content"]) for a, b in zip(stored, turn, strict=False)
    )


class ConflictError(HeredityError):
    """The request does not continue the stored conversation (or another turn was stored first)."""


_TURN_LOCKS = [
    threading.Lock() for _ in range(64)
]  # striped: bounded memory, whatever the number of conversations


def _turn_lock(cid: str) -> threading.Lock:
    """The in-process lock that serializes writing turns on conversation ``cid`` (shared by every
    ``Conversations`` of this process; two conversations may share a stripe, which only makes one wait a
    moment)."""
    return _TURN_LOCKS[zlib.crc32(cid.encode()) % len(_TURN_LOCKS)]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Conversations:
    def __init__(self, store):
        self.engine = store.engine

    def create(
        self, model: str, system_prompt: str | None = None, title: str = "", user_id: str | None = None
    ) -> Conversation:
        now, cid = _now(), f"c-{secrets.token_hex(8)}"
        with Session(self.engine) as s:
            s.add(
                ConversationRow(
                    id=cid,
                    title=title[:255],
                    model=model,
                    system_prompt=system_prompt,
                    created_at=now,
                    updated_at=now,
                    user_id=user_id,
                )
            )
            s.commit()
        return self.get(cid)

    def check_id(self, cid: str) -> str:
        if not isinstance(cid, str) or not CONV_RE.match(cid):
            raise HeredityError(f"{cid!r} is not a conversation id (expected c- and 16 hex digits)")
        return cid

    def get(self, cid: str) -> Conversation:
        self.check_id(cid)
        with Session(self.engine) as s:
            row = s.get(ConversationRow, cid)
            if row is None:
                raise KeyError(cid)
            msgs = s.scalars(
                select(MessageRow).where(MessageRow.conversation_id == cid).order_by(MessageRow.idx)
            ).all()
            fb = {
                f.message_idx: f
                for f in s.scalars(select(FeedbackRow).where(FeedbackRow.conversation_id == cid))
            }
            return Conversation(
                row.id,
                row.title,
                row.model,
                row.system_prompt,
                row.created_at,
                row.updated_at,
                [
                    Message(
                        m.idx,
                        m.role,
                        m.content,
                        m.model,
                        m.params or {},
                        fb[m.idx].rating if m.idx in fb else 0,
                        fb[m.idx].better if m.idx in fb else None,
                    )
                    for m in msgs
                ],
                row.user_id,
            )

    def list(self, limit: int = 200) -> list[dict]:
        with Session(self.engine) as s:
            counts = dict(
                s.execute(
                    select(MessageRow.conversation_id, func.count()).group_by(MessageRow.conversation_id)
                ).all()
            )
            rows = s.scalars(
                select(ConversationRow).order_by(ConversationRow.updated_at.desc()).limit(limit)
            ).all()
            return [
                {
                    "id": r.id,
                    "title": r.title,
                    "model": r.model,
                    "messages": counts.get(r.id, 0),
                    "updated_at": r.updated_at.isoformat(),
                }
                for r in rows
            ]

    def append(self, cid: str, history: list[dict], answer: dict) -> int:
        """Store a turn: ``history`` is every message the request sent (system first, if any), ``answer`` the
        assistant's reply. The stored messages must be a prefix of ``history``; the rest and the answer are
        appended in one transaction. Returns the answer's index. Raises ``ConflictError`` when the stored
        messages do not start ``history`` or when another turn on this conversation was stored first (also one
        written by another process at the same moment); the conversation is then left as that other turn made
        it."""
        self.check_id(cid)
        turn = [m for m in history if m["role"] != "system"]
        conflict = (
            f"the messages sent do not continue conversation {cid} (another turn may have been stored "
            "first); send its stored messages first, or start a new one"
        )
        with _turn_lock(cid), Session(self.engine) as s:
            conv = s.get(ConversationRow, cid, with_for_update=True)  # PostgreSQL: a row lock; SQLite: no-op
            if conv is None:
                raise KeyError(cid)
            stored = s.scalars(
                select(MessageRow).where(MessageRow.conversation_id == cid).order_by(MessageRow.idx)
            ).all()
            if not continues(stored, history):
                raise ConflictError(conflict)
            now = _now()
            new = [*turn[len(stored) :], answer]
            for i, m in enumerate(new, start=len(stored)):
                s.add(
                    MessageRow(
                        conversation_id=cid,
                        idx=i,
                        role=m["role"],
                        content=m["content"],
                        model=m.get("model"),
                        params=m.get("params") or {},
                        created_at=now,
                    )
                )
            if not conv.title:
                first = next((t["content"] for t in turn if t["role"] == "user"), "")
                conv.title = " ".join(first.split())[:80]
            conv.updated_at = now
            try:
                s.commit()
            except IntegrityError:  # another process stored a message at one of these positions first
                s.rollback()
                raise ConflictError(conflict) from None
            return len(stored) + len(new) - 1

    def feedback(self, cid: str, idx: int, rating: int | None = None, better: str | None = None) -> Message:
        """Set thumbs (+1, -1, 0 to clear) and/or a better answer on assistant message ``idx``."""
        self.check_id(cid)
        with Session(self.engine) as s:
            msg = s.scalars(
                select(MessageRow).where(MessageRow.conversation_id == cid, MessageRow.idx == idx)
            ).first()
            if msg is None:
                raise KeyError(f"{cid}/{idx}")
            if msg.role != "assistant":
                raise HeredityError(
                    f"message {idx} of {cid} is a {msg.role} message; feedback goes on assistant answers"
                )
            row = s.get(FeedbackRow, (cid, idx)) or FeedbackRow(
                conversation_id=cid, message_idx=idx, rating=0
            )
            if rating is not None:
                row.rating = rating
            if better is not None:
                row.better = better.strip() or None
            row.updated_at = _now()
            s.merge(row)
            s.commit()
        return self.get(cid).messages[idx]

    def all(self) -> list[Conversation]:
        """Every stored conversation with its messages, oldest first."""
        with Session(self.engine) as s:
            ids = s.scalars(select(ConversationRow.id).order_by(ConversationRow.created_at)).all()
        return [self.get(i) for i in ids]

    def with_feedback(self) -> list[Conversation]:
        """Every conversation that has at least one rated or rewritten answer, oldest first."""
        with Session(self.engine) as s:
            ids = s.scalars(
                select(FeedbackRow.conversation_id)
                .where((FeedbackRow.rating != 0) | (FeedbackRow.better.is_not(None)))
                .distinct()
            ).all()
        return sorted((self.get(i) for i in ids), key=lambda c: c.created_at)

    def delete(self, cid: str) -> None:
        self.check_id(cid)
        with Session(self.engine) as s:
            s.execute(delete(FeedbackRow).where(FeedbackRow.conversation_id == cid))
            s.execute(delete(MessageRow).where(MessageRow.conversation_id == cid))
            s.execute(delete(ConversationRow).where(ConversationRow.id == cid))
            s.commit()
