"""Merge configs: mergekit's YAML (models, parameters, merge_method, base_model, dtype) plus heredity's keys.

    merge_method: ties
    base_model: smollm2-135m-instruct
    models:
      - model: a-1234
        parameters: {weight: 1.0, density: 0.2}
      - model: a-5678
        parameters: {weight: 1.0, density: 0.2}
    parameters: {lambda: 1.0, normalize: true}
    dtype: float32

``localize_stitch`` adds a ``localize`` block (heredity's own key) and, for the trained masks, a ``data``
dataset per model (prompt/completion rows of that model's task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from heredity.errors import HeredityError
from heredity.merge.methods import REGISTRY

PER_MODEL = {"weight", "density"}
GLOBAL = {"lambda", "normalize", "rescale", "weight", "density"}


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a model spec: stored id, bundled name, local HF dir, hub id")
    parameters: dict[str, float] = Field(default_factory=dict)
    data: str | None = Field(
        None, description="heredity: the task's dataset (for trained Localize-and-Stitch masks)"
    )

    @model_validator(mode="after")
    def _known(self):
        bad = set(self.parameters) - PER_MODEL
        if bad:
            raise ValueError(
                f"unknown model parameter {sorted(bad)[0]!r}; per-model parameters are weight and density"
            )
        return self


class LocalizeConfig(BaseModel):
    """Localize-and-Stitch (He et al. 2024): which coordinates of each task vector to keep."""

    model_config = ConfigDict(extra="forbid")
    sparsity: float = Field(0.01, gt=0, le=1, description="fraction of each task vector's entries kept")
    dataless: bool = Field(
        True, description="top-k of |τ| (no data); false: learn the mask on each task's data"
    )
    examples: int = Field(64, ge=1, description="labelled examples per task for the learned mask")
    steps: int = Field(20, ge=1, description="optimizer steps of mask learning")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.2, gt=0, description="Adam learning rate on the mask logits S")
    l1: float = Field(1e-5, ge=0, description="weight of the L1 penalty on σ(S), per kept entry")
    init: float = Field(
        1.0,
        gt=0,
        description="S starts at +init on the top-k of |τ| and -init elsewhere; small enough "
        "that lr × steps can move an entry across (else the learned mask is the dataless one)",
    )
    chat: bool = True


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merge_method: Literal["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "localize_stitch"]
    base_model: str | None = None
    models: list[ModelEntry] = Field(min_length=1)
    parameters: dict[str, float | bool] = Field(default_factory=dict)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = Field(0, description="heredity: seeds DARE's random drops")
    localize: LocalizeConfig | None = None
    name: str | None = Field(None, description="heredity: the merged model's name in the store")

    @model_validator(mode="after")
    def _check(self):
        method = REGISTRY[self.merge_method]
        if method.needs_base and not self.base_model:
            raise ValueError(
                f"merge_method {self.merge_method} needs base_model (the model the inputs were tuned from)"
            )
        bad = set(self.parameters) - GLOBAL
        if bad:
            raise ValueError(
                f"unknown parameter {sorted(bad)[0]!r}; global parameters are {', '.join(sorted(GLOBAL))}"
            )
        given = set(self.parameters) | {k for e in self.models for k in e.parameters}
        unused = sorted(given - method.params)
        if unused:  # never silently ignored
            raise ValueError(
                f"merge_method {self.merge_method} does not use parameter {unused[0]!r}; "
                f"it takes {', '.join(sorted(method.params))}"
            )
        for e in self.models:
            d = self.value(e, "density", 1.0)
            if not 0 < d <= 1:
                raise ValueError(f"density of {e.model} is {d}; it must be in (0, 1]")
        if self.merge_method == "localize_stitch":
            loc = self.localize or LocalizeConfig()
            if not loc.dataless and any(e.data is None for e in self.models):
                raise ValueError(
                    "learned Localize-and-Stitch masks need `data:` (a dataset) on every model; "
                    "or set localize.dataless"
                )
        return self

    def value(self, entry: ModelEntry, key: str, default: float) -> float:
        if key in entry.parameters:
            return float(entry.parameters[key])
        return float(self.parameters.get(key, default))


def load_config(path: str | Path) -> MergeConfig:
    """Read a YAML merge config; a problem is one line naming the key."""
    import yaml
    from pydantic import ValidationError

    p = Path(path)
    if not p.is_file():
        raise HeredityError(f"merge config {p} does not exist; give a YAML file (see docs/guides/merging.md)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise HeredityError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise HeredityError(f"{p} must hold a mapping with merge_method, base_model and models")
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as e:
        x = e.errors()[0]
        where = ".".join(str(v) for v in x["loc"]) or "config"
        msg = x["msg"].removeprefix("Value error, ")
        raise HeredityError(f"{p}: {where}: {msg}") from None
