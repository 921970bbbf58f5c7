"""Metadata database: steps and artifacts (SQLAlchemy; SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class StepRow(Base):
    """One finished operation: what ran, on what, with which config, and what it made."""

    __tablename__ = "steps"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # hash of (op, config, inputs, seed)
    op: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    inputs: Mapped[list] = mapped_column(JSON)  # ordered artifact ids
    outputs: Mapped[dict] = mapped_column(JSON)  # role -> artifact id
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    code_version: Mapped[str] = mapped_column(String(80))
    lib_versions: Mapped[dict] = mapped_column(JSON, default=dict)
    host: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime] = mapped_column(DateTime)
    # for each input, the key of the step that made it on the path this step ran on (None: not known)
    input_steps: Mapped[list | None] = mapped_column(JSON, nullable=True)


class ArtifactRow(Base):
    """A content-addressed model, adapter, dataset or report directory under HEREDITY_HOME/artifacts."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(255))
    step_key: Mapped[str] = mapped_column(
        ForeignKey("steps.key")
    )  # the step that first made it (all: ArtifactStepRow)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    description: Mapped[str] = mapped_column(Text, default="")
    # {relative path: [size, mtime_ns]} as stored: the cheap check on every load (heredity.store.verify)
    files: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(
        DateTime, nullable=True
    )  # last full re-hash that matched
    # the ``store.hash_dir`` version its id was computed with; NULL: 1 (stored before hash versions were
    # recorded)
    hash_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ArtifactStepRow(Base):
    """Every step that produced an artifact: byte-identical outputs of different steps share one artifact."""

    __tablename__ = "artifact_steps"

    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"), primary_key=True)
    step_key: Mapped[str] = mapped_column(ForeignKey("steps.key"), primary_key=True, index=True)
    made_at: Mapped[datetime] = mapped_column(DateTime)


class ConversationRow(Base):
    """A chat kept by the lab server (its messages and feedback are rows below)."""

    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # c- + 16 hex, random
    title: Mapped[str] = mapped_column(String(255), default="")
    model: Mapped[str] = mapped_column(String(64))  # artifact id of the model that answers
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    user_id: Mapped[str | None] = mapped_column(
        String(128), nullable=True
    )  # who held it (insights count distinct users)


class PromptAliasRow(Base):
    """Where an alias of a prompt template points now (``NAME@ALIAS``: a movable pointer to one version, as in
    MLflow's prompt registry); every move is also appended to ``prompt_alias_moves``."""

    __tablename__ = "prompt_aliases"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # the template's name
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))  # the version (p-...) it points to
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    updated_by: Mapped[str] = mapped_column(String(255))


class PromptAliasMoveRow(Base):
    """One move of a prompt alias (append-only: rows are never updated or deleted)."""

    __tablename__ = "prompt_alias_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    from_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # None: the alias is new
    to_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))
    moved_at: Mapped[datetime] = mapped_column(DateTime)
    moved_by: Mapped[str] = mapped_column(String(255))


class ModelAliasRow(Base):
    """Where a served model's movable name points now (``lab-latest``: the model ``heredity loop`` promoted
    last); every move is also appended to ``model_alias_moves``."""

    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))  # a model (m-) or adapter (a-)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    updated_by: Mapped[str] = mapped_column(String(255))


class ModelAliasMoveRow(Base):
    """One move of a model alias (append-only: rows are never updated or deleted), with why it moved."""

    __tablename__ = "model_alias_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    from_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # None: the alias is new
    to_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))
    reason: Mapped[str] = mapped_column(Text)  # "round r-…: promoted", "rollback", "set by hand"
    moved_at: Mapped[datetime] = mapped_column(DateTime)
    moved_by: Mapped[str] = mapped_column(String(255))


def add_missing_columns(engine) -> None:
    """Columns added after a store was created (``create_all`` makes tables, never columns): ALTER TABLE
    ADD."""
    from sqlalchemy import inspect, text

    insp = inspect(engine)
    for table in Base.metadata.sorted_tables:
        if not insp.has_table(table.name):
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have and col.nullable:
                with engine.begin() as conn:
                    conn.execute(
                        text(
                            f"ALTER TABLE {table.name} ADD COLUMN {col.name} "
                            f"{col.type.compile(engine.dialect)}"
                        )
                    )


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("conversation_id", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # position in the conversation, from 0
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # who wrote an assistant message
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # sampling parameters of an assistant message
    created_at: Mapped[datetime] = mapped_column(DateTime)


class FeedbackRow(Base):
    """A user's judgement of one assistant message: thumbs (+1/-1/0) and optionally a better answer."""

    __tablename__ = "feedback"

    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), primary_key=True)
    message_idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    rating: Mapped[int] = mapped_column(Integer, default=0)
    better: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # WAL: readers never block the writer
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    return engine
