"""Workarounds for the libraries' own deprecation notices, in one place (models is the lowest layer that loads
PEFT models: engine.finetune and models.registry both use it)."""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def quiet_peft_checkpointing_probe():
    """Silence exactly one FutureWarning, the one PEFT (up to 0.21, the newest) causes itself:
    ``PeftModel.__init__`` reads the base model's ``is_gradient_checkpointing``, which transformers >= 5.23
    deprecates for ``is_activation_checkpointing`` (same value). We never call the old name; any other warning
    still shows. Wrap whatever builds a PeftModel (``get_peft_model``, ``PeftModel.from_pretrained``) in
    it."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
