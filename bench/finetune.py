"""LoRA SFT throughput: heredity's fine-tuning loop vs TRL's SFTTrainer, same data and settings.

    .venv/bin/python bench/finetune.py [--rows 128] [--repeats 1]

Data: prompt/completion pairs (number prompts → number lists) in the chat template; LoRA r=8, α=8 on all
attention and MLP projections; batch 8, lr 2e-4, linear schedule, completion-only loss, fp32 on CPU.
tokens/s = tokens in the training sequences (prompt + completion, no padding) / training wall time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time

import torch

from heredity.engine.finetune import FinetuneConfig, encode_rows, train
from heredity.models import load
from heredity.store import Store


def rows(k: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        seeds = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 8)))
        more = ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(4, 10)))
        out.append({"prompt": f"The sequence starts with: {seeds}. Add up to 10 more values (no more than 3 digits each).",
                    "completion": more})
    return out


def run_heredity(spec, data, cfg: FinetuneConfig) -> tuple[float, int]:
    model, tok = load(spec, Store(), trainable=True)
    t = time.perf_counter()
    _, m = train(model, tok, data, cfg, progress=False)
    return time.perf_counter() - t, m["train_tokens"]


def run_trl(spec, data, cfg: FinetuneConfig) -> tuple[float, int]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tok = load(spec, Store(), trainable=True)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in data])
    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(
            output_dir=d, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.lr, lr_scheduler_type="linear", warmup_steps=0, num_train_epochs=cfg.epochs,
            max_length=cfg.max_length, packing=False, completion_only_loss=True, report_to="none", save_strategy="no",
            logging_steps=1000, use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0, seed=cfg.seed,
            gradient_checkpointing=False,  # TRL defaults it to True; heredity does not checkpoint activations
        )
        peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.lora_targets,
                              task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)
        n_tok = sum(len(x) for x in trainer.train_dataset["input_ids"])
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t, int(n_tok * cfg.epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    data = rows(args.rows)
    cfg = FinetuneConfig(method="lora", loss="completion_only", lr=2e-4, batch_size=8, epochs=1, max_length=256, warmup_ratio=0.0)
    tok = load(args.model, Store())[1]
    print(f"{len(encode_rows(tok, data, cfg))} examples", file=sys.stderr)
    h, g = [], []
    for _ in range(args.repeats):
        s, n = run_trl(args.model, data, cfg)
        g.append(n / s)
        s, n = run_heredity(args.model, data, cfg)
        h.append(n / s)
        print(f"TRL {g[-1]:.1f} tok/s, heredity {h[-1]:.1f} tok/s", file=sys.stderr)
    gm, hm = statistics.median(g), statistics.median(h)
    print(f"\nLoRA SFT on {args.model}, {args.rows} rows, batch 8, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| trainer | tokens/s | ratio |")
    print("|---|---:|---:|")
    print(f"| TRL SFTTrainer | {gm:.1f} | 1.00x |")
    print(f"| heredity | {hm:.1f} | {hm / gm:.2f}x |")


if __name__ == "__main__":
    main()
