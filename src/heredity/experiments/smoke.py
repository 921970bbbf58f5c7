"""Smoke: the foundation end to end in about a minute on a CPU.

1. Convert the bundled SmolLM2-135M-Instruct (GGUF) once into the store and sample from it.
2. Fine-tune a tiny from-scratch model on those samples (LoRA, completion-only loss).
3. Sample from the fine-tuned tiny model and print the lineage of what it inherited.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from heredity.engine import FinetuneConfig, SampleConfig, finetune, sample_step
from heredity.experiments import experiment
from heredity.store import Store

PROMPTS = [
    "Name an animal that lives in the sea.",
    "Write three numbers between 100 and 999.",
    "What colour is the sky on a clear day?",
    "Say hello in French.",
]


class Config(BaseModel):
    teacher: str = "smollm2-135m-instruct"
    student: str = "tiny:small"
    samples_per_prompt: int = Field(4, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    finetune_steps: int = Field(30, ge=1)
    seed: int = 0

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {"quick": cls(), "paper": cls(samples_per_prompt=32, max_new_tokens=64, finetune_steps=300)}


@experiment("smoke", question="A one-minute tour of the foundation: sample, fine-tune, lineage")
def run(store: Store, config: Config, progress: bool = True) -> dict:
    samples = sample_step(
        store,
        config.teacher,
        PROMPTS,
        SampleConfig(
            n=config.samples_per_prompt,
            max_new_tokens=config.max_new_tokens,
            temperature=0.8,
            seed=config.seed,
        ),
        name="smoke-samples",
        progress=progress,
    )
    ft = finetune(
        store,
        config.student,
        samples,
        FinetuneConfig(
            method="lora",
            lora_r=8,
            lora_alpha=16,
            lr=1e-2,
            max_steps=config.finetune_steps,
            batch_size=8,
            seed=config.seed,
        ),
        progress=progress,
    )
    student = ft["model"]
    check = sample_step(
        store,
        student,
        PROMPTS[:2],
        SampleConfig(n=1, max_new_tokens=24, temperature=0),
        name="smoke-check",
        progress=progress,
    )
    from heredity.store import read_table

    teacher_rows = read_table(store.path(samples)).to_pylist()
    student_rows = read_table(store.path(check)).to_pylist()
    return {
        "teacher_examples": [
            f"{r['prompt']} → {r['completion']}" for r in teacher_rows[:: config.samples_per_prompt]
        ],
        "student_examples": [f"{r['prompt']} → {r['completion']}" for r in student_rows],
        "teacher_samples": samples,
        "student": student,
        "student_samples": check,
        "finetune_loss_first": ft.metrics.get("loss_first"),
        "finetune_loss_last": ft.metrics.get("loss_last"),
        "cached": ft.cached,
        "lineage_of": student,
    }
