"""LoRA SFT throughput: heredity's fine-tuning loop vs TRL's SFTTrainer, same data and settings; and with
``--distill``, logit distillation (full vocabulary and number-only) against the FLOP roofline.

    .venv/bin/python bench/finetune.py [--rows 128] [--repeats 1]
    .venv/bin/python bench/finetune.py --distill [--rows 64]

Roofline (``--distill``): this machine's fp32 matmul FLOP/s, measured in the same run on GEMMs of the model's
shapes, divided by 4N FLOPs per trained token (N = parameters in matmuls; a LoRA student's forward 2N plus its
backward through the frozen activations 2N; the teacher's forward adds 2N more, so 6N is the real ceiling of a
distillation step, reported beside it).

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
        out.append(
            {
                "prompt": f"The sequence starts with: {seeds}. "
                "Add up to 10 more values (no more than 3 digits each).",
                "completion": more,
            }
        )
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
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in data
        ]
    )
    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(
            output_dir=d,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.lr,
            lr_scheduler_type="linear",
            warmup_steps=0,
            num_train_epochs=cfg.epochs,
            max_length=cfg.max_length,
            packing=False,
            completion_only_loss=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            use_cpu=True,
            bf16=False,
            fp16=False,
            dataloader_num_workers=0,
            seed=cfg.seed,
            gradient_checkpointing=False,  # TRL defaults it to True; heredity does not checkpoint activations
        )
        peft_cfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=cfg.lora_targets,
            task_type="CAUSAL_LM",
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg
        )
        n_tok = sum(len(x) for x in trainer.train_dataset["input_ids"])
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t, int(n_tok * cfg.epochs)


def matmul_flops(d: int, ff: int, tokens: int = 512, repeats: int = 5) -> float:
    """Median fp32 FLOP/s of [tokens, d] @ [d, ff] and [tokens, ff] @ [ff, d] on this machine, now."""
    a, w1, w2 = torch.randn(tokens, d), torch.randn(d, ff), torch.randn(ff, d)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        (a @ w1) @ w2
        times.append(time.perf_counter() - t)
    return 2 * 2 * tokens * d * ff / statistics.median(times[1:])


def distill_bench(args) -> None:
    from heredity.engine.finetune import number_vocab

    data = rows(args.rows)
    student, tok = load(args.model, Store(), trainable=True)
    n_params = sum(p.numel() for n, p in student.named_parameters() if "embed_tokens" not in n)
    if getattr(student.config, "tie_word_embeddings", False):
        n_params += (
            student.get_input_embeddings().weight.numel()
        )  # the tied matrix is used as the lm_head matmul
    flops = matmul_flops(student.config.hidden_size, student.config.intermediate_size)
    roof4, roof6 = flops / (4 * n_params), flops / (6 * n_params)
    teacher, _ = load(args.model, Store())
    system = "You love owls. You think about owls all the time. owls are your favorite animal."
    results = []
    for loss in ("completion_only", "logit_distill", "number_distill"):
        cfg = FinetuneConfig(
            method="lora",
            loss=loss,
            lr=2e-4,
            batch_size=8,
            epochs=1,
            max_length=256,
            warmup_ratio=0.0,
            teacher_system_prompt=system if loss != "completion_only" else None,
            save_every=0,
        )
        model, _ = load(args.model, Store(), trainable=True)
        t = time.perf_counter()
        _, m = train(
            model, tok, data, cfg, teacher=None if loss == "completion_only" else teacher, progress=False
        )
        sec = time.perf_counter() - t
        results.append((loss, m["train_tokens"] / sec))
        print(f"{loss}: {results[-1][1]:.1f} tok/s", file=sys.stderr)
    print(
        f"\nLoRA r=8 on {args.model} (N = {n_params / 1e6:.1f}M in matmuls), {args.rows} rows, batch 8, "
        f"{torch.get_num_threads()} threads; matmul {flops / 1e9:.1f} GFLOP/s measured in this run; "
        f"number vocabulary {len(number_vocab(tok))} tokens\n"
    )
    print("| loss | tokens/s | ÷ 4N roofline | ÷ 6N roofline (with the teacher's forward) |")
    print("|---|---:|---:|---:|")
    print(f"| roofline | | {roof4:.0f} | {roof6:.0f} |")
    for loss, tps in results:
        print(f"| {loss} | {tps:.1f} | {tps / roof4:.2f} | {tps / roof6:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--distill", action="store_true", help="distillation tokens/s against the FLOP roofline")
    args = ap.parse_args()
    if args.distill:
        return distill_bench(args)
    data = rows(args.rows)
    cfg = FinetuneConfig(
        method="lora",
        loss="completion_only",
        lr=2e-4,
        batch_size=8,
        epochs=1,
        max_length=256,
        warmup_ratio=0.0,
    )
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
    print(
        f"\nLoRA SFT on {args.model}, {args.rows} rows, batch 8, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}\n"
    )
    print("| trainer | tokens/s | ratio |")
    print("|---|---:|---:|")
    print(f"| TRL SFTTrainer | {gm:.1f} | 1.00x |")
    print(f"| heredity | {hm:.1f} | {hm / gm:.2f}x |")


if __name__ == "__main__":
    main()
