"""Model specs → stored HF checkpoints → loaded (model, tokenizer). See ``registry`` for the spec grammar."""

from heredity.models.registry import (
    BUNDLED,
    ModelSpec,
    RemoteModel,
    base_model_id,
    default_device,
    load,
    materialize,
    merge_adapter,
    parse_spec,
    stack_adapters,
)

__all__ = [
    "BUNDLED",
    "ModelSpec",
    "RemoteModel",
    "base_model_id",
    "default_device",
    "load",
    "materialize",
    "merge_adapter",
    "parse_spec",
    "stack_adapters",
]
