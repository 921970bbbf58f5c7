"""Artifact store with lineage. See ``heredity.store.store`` for the rules."""

from heredity.store.store import (
    Artifact,
    Step,
    StepContext,
    StepResult,
    Store,
    code_version,
    config_to_json,
    default_home,
)
from heredity.store.tables import read_table, require_columns, write_table

__all__ = [
    "Artifact",
    "Step",
    "StepContext",
    "StepResult",
    "Store",
    "code_version",
    "config_to_json",
    "default_home",
    "read_table",
    "require_columns",
    "write_table",
]
