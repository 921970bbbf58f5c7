"""Model merging: task vectors and merge methods over tensors, streamed from safetensors."""

from heredity.merge.config import LocalizeConfig, MergeConfig, ModelEntry, load_config
from heredity.merge.merge import merge
from heredity.merge.methods import REGISTRY

__all__ = ["REGISTRY", "LocalizeConfig", "MergeConfig", "ModelEntry", "load_config", "merge"]
