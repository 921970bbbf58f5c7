"""The compute: batched sampling, fine-tuning, log-probabilities."""

from heredity.engine.finetune import FinetuneConfig, finetune, train
from heredity.engine.logprobs import logprobs
from heredity.engine.sampling import Completion, SampleConfig, completions, render_prompt, sample, sample_step

__all__ = [
    "Completion",
    "FinetuneConfig",
    "SampleConfig",
    "completions",
    "finetune",
    "logprobs",
    "render_prompt",
    "sample",
    "sample_step",
    "train",
]
