"""Checkpoints as lazy tensor maps: one tensor is read at a time, so a merge's memory does not grow with
inputs.

``ModelTensors`` reads an HF checkpoint's safetensors files (one file or a sharded index) through
``safe_open``; ``AdapterTensors`` presents a PEFT LoRA adapter as the full weights it stands for,
``base + scale · B @ A`` on its target modules and the base elsewhere, computed per tensor on demand.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from heredity.errors import HeredityError


class ModelTensors:
    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.name
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.path / "model.safetensors").is_file():
            with safe_open(self.path / "model.safetensors", "pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        else:
            raise HeredityError(
                f"{self.label} has no safetensors weights in {self.path}; "
                "merge needs HF safetensors checkpoints"
            )
        self.files = weight_map
        self._shapes: dict[str, tuple[int, ...]] = {}
        for fname in sorted(set(weight_map.values())):
            with safe_open(self.path / fname, "pt") as f:
                for k in f.keys():  # noqa: SIM118
                    self._shapes[k] = tuple(f.get_slice(k).get_shape())

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor, or only ``rows`` (a slice of its first dimension) read from disk."""
        with safe_open(self.path / self.files[name], "pt") as f:
            if rows is None:
                return f.get_tensor(name).float()
            return f.get_slice(name)[rows.start : rows.stop].float()


class AdapterTensors:
    """A LoRA adapter over ``base``: the same names and shapes as the base, with the low-rank update folded
    in."""

    def __init__(self, path: str | Path, base: ModelTensors, label: str | None = None):
        self.path, self.base = Path(path), base
        self.label = label or self.path.name
        cfg_file = self.path / "adapter_config.json"
        weights = self.path / "adapter_model.safetensors"
        if not cfg_file.is_file() or not weights.is_file():
            raise HeredityError(
                f"{self.label} is not a PEFT adapter (no adapter_config.json / adapter_model.safetensors)"
            )
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise HeredityError(
                f"{self.label} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be merged"
            )
        r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
        self.scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        self.weights = weights
        self.pairs: dict[str, tuple[str, str]] = {}
        with safe_open(weights, "pt") as f:
            keys = set(f.keys())  # noqa: SIM118
        for a in keys:
            if not a.endswith(".lora_A.weight"):
                continue
            module = a[: -len(".lora_A.weight")]
            name = module.removeprefix("base_model.model.") + ".weight"
            if name not in base._shapes:
                raise HeredityError(
                    f"{self.label}: adapter tensor {a} has no base tensor {name}; "
                    "the adapter is for another base"
                )
            self.pairs[name] = (a, module + ".lora_B.weight")
        extra = [k for k in keys if ".lora_" not in k]
        if extra:
            raise HeredityError(
                f"{self.label}: adapter tensor {extra[0]} is not a LoRA factor "
                "(modules_to_save are not supported)"
            )

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def get(self, name: str, rows: slice | None = None) -> torch.Tensor:
        w = self.base.get(name, rows)
        if name in self.pairs:
            a_key, b_key = self.pairs[name]
            with safe_open(self.weights, "pt") as f:
                a, b = f.get_tensor(a_key).float(), f.get_tensor(b_key).float()
            delta = (b @ a) * self.scale  # whole, then sliced: a row-sliced matmul can round differently
            if self.fan_in_fan_out:
                delta = delta.T
            w += delta if rows is None else delta[rows]
        return w


def open_artifact(store, aid: str, base: ModelTensors | None = None):
    """Lazy tensors of a stored model or adapter (an adapter needs its base's tensors)."""
    art = store.get(aid)
    label = f"{art.name} ({aid})"
    if art.kind == "model":
        return ModelTensors(art.path, label)
    if art.kind == "adapter":
        base = base or ModelTensors(store.path(art.meta["base"]), art.meta["base"])
        return AdapterTensors(art.path, base, label)
    raise HeredityError(f"{aid} is a {art.kind}; merge takes models (m-...) and adapters (a-...)")
