"""LoRA SFT throughput: heredity's fine-tuning loop vs TRL's SFTTrainer, same data and settings, with heredity
also run through PEFT's own LoRA forward (what ``engine.fastlora`` adds; the three interleaved per repeat);
and with ``--distill``, logit distillation (full vocabulary and number-only) against the FLOP roofline.

    .venv/bin/python bench/finetune.py [--rows 128] [--repeats 1]
    .venv/bin/python bench/finetune.py --distill [--rows 64] [--repeats 3]
    .venv/bin/python bench/finetune.py --memory [--rows 64] [--batch 16] [--repeats 1]
    .venv/bin/python bench/finetune.py --memory --pieces 384,256,192 [--repeats 3]

Memory (``--memory``): peak resident memory (``ru_maxrss``, the model's pages included) and tokens/s of a LoRA
fine-tune at batch 16, each trainer alone in a fresh child process on the same rows: heredity as the command
runs it (the output head at labelled positions only, the batch in pieces of ``micro_batch_tokens``, under
mimalloc), the same under glibc's malloc and under ``HEREDITY_MALLOC=lean``, heredity made to run as it did
before issue 39 (the whole batch at once, logits at every position), and TRL's ``SFTTrainer`` with its
default gradient checkpointing and without it (run as a user runs it: plain Python, glibc).

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
import contextlib
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from heredity.allocator import mapped, preload_env
from heredity.engine import fastlora
from heredity.engine.finetune import PIECE_TOKENS, FinetuneConfig, encode_rows, train
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


def run_heredity(spec, data, cfg: FinetuneConfig, peft_forward: bool = False) -> tuple[float, int]:
    """heredity's loop; ``peft_forward``: with PEFT's own LoRA forward instead of ``engine.fastlora``'s step
    (what that step adds)."""
    model, tok = load(spec, Store(), trainable=True)
    t = time.perf_counter()
    with peft_lora_forward() if peft_forward else contextlib.nullcontext():
        _, m = train(model, tok, data, cfg, progress=False)
    return time.perf_counter() - t, m["train_tokens"]


@contextlib.contextmanager
def peft_lora_forward():
    """Within the block, heredity's loop trains LoRA through PEFT's own forward (no ``fastlora``)."""
    real = fastlora.installed
    fastlora.installed = lambda model: contextlib.nullcontext()
    try:
        yield
    finally:
        fastlora.installed = real


def run_trl(spec, data, cfg: FinetuneConfig, checkpointing: bool = False) -> tuple[float, int]:
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
            gradient_checkpointing=checkpointing,  # TRL defaults it to True; heredity's loop does not
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


def matmul_flops(d: int, ff: int, tokens: int = 512, repeats: int = 30) -> float:
    """The best fp32 FLOP/s of [tokens, d] @ [d, ff] and [tokens, ff] @ [ff, d] on this machine over
    ``repeats`` runs after three to warm up: a peak, as a roofline is (a median of 5 read 72 GFLOP/s on a
    machine whose training loop itself ran its matmuls faster)."""
    a, w1, w2 = torch.randn(tokens, d), torch.randn(d, ff), torch.randn(ff, d)
    times = []
    for _ in range(repeats + 3):
        t = time.perf_counter()
        (a @ w1) @ w2
        times.append(time.perf_counter() - t)
    return 2 * 2 * tokens * d * ff / min(times[3:])


def distill_bench(args) -> None:
    from sample import cpu_model  # bench/sample.py, beside this script

    from heredity.engine.finetune import number_vocab
    from heredity.engine.targets import Targets, TargetsConfig, compute, save

    data = rows(args.rows)
    student, tok = load(args.model, Store(), trainable=True)
    n_params = sum(p.numel() for n, p in student.named_parameters() if "embed_tokens" not in n)
    if getattr(student.config, "tie_word_embeddings", False):
        n_params += (
            student.get_input_embeddings().weight.numel()
        )  # the tied matrix is used as the lm_head matmul
    shape = (student.config.hidden_size, student.config.intermediate_size)
    flops = matmul_flops(*shape)
    teacher, _ = load(args.model, Store())
    system = "You love owls. You think about owls all the time. owls are your favorite animal."
    # (label, loss, top_k, stored): the teacher live beside the student, or its targets computed once
    runs = [
        ("completion_only", "completion_only", None, False),
        ("logit_distill, teacher live", "logit_distill", None, False),
        ("number_distill, teacher live", "number_distill", None, False),
        ("number_distill, stored targets", "number_distill", None, True),
        ("number_distill, stored targets, PEFT's LoRA forward", "number_distill", None, True),
        (f"logit_distill, stored top-{args.top_k}", "logit_distill", args.top_k, True),
    ]
    results, once, computed = {label: [] for label, *_ in runs}, [], {}
    # the repeats interleaved: every row once per repeat, the median of each row's runs reported
    for _, (label, loss, k, stored) in itertools.product(range(args.repeats), runs):
        cfg = FinetuneConfig(
            method="lora",
            loss=loss,
            lr=2e-4,
            batch_size=8,
            epochs=1,
            max_length=256,
            warmup_ratio=0.0,
            teacher_system_prompt=system if loss != "completion_only" else None,
            distill_top_k=k,
            save_every=0,
        )
        targets = None
        if stored:
            if (loss, k) not in computed:  # once per kind of targets, as the store computes them
                t = time.perf_counter()
                tensors, metrics = compute(teacher, tok, data, TargetsConfig.of(cfg))
                computed[loss, k] = tensors
                left = f", leftover mass mean {metrics['leftover_mass_mean']:.4f}" if k else ""
                sec = time.perf_counter() - t
                once.append((label, metrics["positions"], metrics["bytes"] / 1e6, sec, left))
            tmp = tempfile.TemporaryDirectory()  # the student reads them lazily from there
            targets = Targets(save(tmp.name, computed[loss, k]))
        model, _ = load(args.model, Store(), trainable=True)
        t = time.perf_counter()
        live = None if loss == "completion_only" or stored else teacher
        with peft_lora_forward() if "PEFT" in label else contextlib.nullcontext():
            _, m = train(model, tok, data, cfg, teacher=live, targets=targets, progress=False)
        sec = time.perf_counter() - t
        if stored:
            tmp.cleanup()
        results[label].append(m["train_tokens"] / sec)
        print(f"{label}: {results[label][-1]:.1f} tok/s", file=sys.stderr)
    flops = max(flops, matmul_flops(*shape))  # the peak before and after the runs
    roof4, roof6 = flops / (4 * n_params), flops / (6 * n_params)
    print(
        f"\nLoRA r=8 on {args.model} (N = {n_params / 1e6:.1f}M in matmuls), {args.rows} rows, batch 8, "
        f"{torch.get_num_threads()} threads, {cpu_model()}; matmul peak {flops / 1e9:.1f} GFLOP/s measured "
        f"in this run (best of before and after); number vocabulary {len(number_vocab(tok))} tokens; "
        f"median of {args.repeats} (the rows interleaved in each repeat)\n"
    )
    print("| student's loss | tokens/s | ÷ 4N roofline | ÷ 6N roofline (with the teacher's forward) |")
    print("|---|---:|---:|---:|")
    print(f"| roofline | | {roof4:.0f} | {roof6:.0f} |")
    for label, runs_tps in results.items():
        tps = statistics.median(runs_tps)
        print(f"| {label} | {tps:.1f} | {tps / roof4:.2f} | {tps / roof6:.2f} |")
    print(
        "\nThe stored targets, computed once per teacher and dataset (every student of the teacher reads "
        "them):\n"
    )
    print("| targets | positions | MB | seconds, once |")
    print("|---|---:|---:|---:|")
    for label, n, mb, sec, left in once:
        print(f"| {label.split(', ')[1]}{left} | {n} | {mb:.1f} | {sec:.1f} |")


TRAINERS = {
    "heredity": "heredity, as the `heredity` command runs it (mimalloc)",
    "heredity-glibc": "heredity, HEREDITY_MALLOC=glibc",
    "heredity-lean": "heredity, HEREDITY_MALLOC=lean (glibc's mmap threshold fixed at 256 KiB, 2 arenas)",
    "heredity-whole": "heredity, whole batch and every position's logits (before issue 39; glibc)",
    "trl": "TRL SFTTrainer, gradient checkpointing on (its default; glibc)",
    "trl-nockpt": "TRL SFTTrainer, gradient checkpointing off (glibc)",
}
# the children started as the `heredity` command starts itself (heredity/allocator.py)
MIMALLOC = {"heredity"}


def memory_child(args) -> None:
    """One trainer, alone in this process; prints its peak resident memory and tokens/s as JSON."""
    data = rows(args.rows)
    whole = args.child == "heredity-whole"
    cfg = FinetuneConfig(
        method="lora",
        loss="completion_only",
        lr=2e-4,
        batch_size=args.batch,
        epochs=1,
        max_length=256,
        warmup_ratio=0.0,
        save_every=0,
        micro_batch_tokens=10**9 if whole else args.micro_batch_tokens,
    )
    if whole:  # the loop as it ran before: the model's own logits at every position
        import importlib

        ft = importlib.import_module("heredity.engine.finetune")
        split = ft.HiddenTap.__init__

        def unsplit(self, model):
            split(self, model)
            self.close()

        ft.HiddenTap.__init__ = unsplit
    assert mapped("libmimalloc") == (args.child in MIMALLOC), "the child runs under the wrong allocator"
    if args.child == "heredity-lean":
        from heredity.allocator import lean_malloc

        assert lean_malloc(), "glibc's allocator could not be set here"
    if args.child.startswith("trl"):
        s, n = run_trl(args.model, data, cfg, checkpointing=args.child == "trl")
    else:
        s, n = run_heredity(args.model, data, cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_gb": peak / 1e9, "tok_s": n / s}))


def memory_child_run(k: str, args, pieces: int) -> dict:
    """One trainer in a fresh child process (``memory_child``), started under its allocator."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        k,
        "--rows",
        str(args.rows),
        "--batch",
        str(args.batch),
        "--micro-batch-tokens",
        str(pieces),
        "--model",
        args.model,
    ]
    env = {k2: v for k2, v in os.environ.items() if k2 != "HEREDITY_MALLOC"}
    env = preload_env(env) if k in MIMALLOC else env
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{k} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(k, pieces, out, file=sys.stderr)
    return out


def pieces_bench(args) -> None:
    """heredity as the command runs it, at each piece size of ``--pieces``, the sizes interleaved in each
    repeat: the memory a smaller piece saves and the speed it costs."""
    from sample import cpu_model  # bench/sample.py, beside this script

    sizes = [int(x) for x in args.pieces.split(",")]
    out = {n: [] for n in sizes}
    for _ in range(args.repeats):
        for n in sizes:
            out[n].append(memory_child_run("heredity", args, n))
    print(
        f"\n# {cpu_model()}, {torch.get_num_threads()} threads; LoRA r=8 on {args.model}, {args.rows} rows, "
        f"batch {args.batch}, one epoch, under mimalloc; each run a fresh process, median of {args.repeats}\n"
    )
    print("| tokens per piece | peak resident GB | tokens/s | speed ÷ the first |")
    print("|---:|---:|---:|---:|")
    first = statistics.median(x["tok_s"] for x in out[sizes[0]])
    for n in sizes:
        peak = statistics.median(x["peak_gb"] for x in out[n])
        tps = statistics.median(x["tok_s"] for x in out[n])
        print(f"| {n} | {peak:.2f} | {tps:.1f} | {tps / first:.2f}x |")


def memory_bench(args) -> None:
    from sample import cpu_model  # bench/sample.py, beside this script

    out = {k: [] for k in TRAINERS}
    for _ in range(args.repeats):
        for k in TRAINERS:
            out[k].append(memory_child_run(k, args, args.micro_batch_tokens))
    model, _ = load(args.model, Store())
    model_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    print(
        f"\n# {cpu_model()}, {torch.get_num_threads()} threads; LoRA r=8 on {args.model} "
        f"(fp32 weights {model_gb:.2f} GB), {args.rows} rows, batch {args.batch} (heredity in pieces of "
        f"{args.micro_batch_tokens} tokens), one epoch; "
        "each trainer alone "
        f"in a fresh process, median of {args.repeats}\n"
    )
    trl = statistics.median(x["peak_gb"] for x in out["trl"])
    print("| trainer | peak resident GB | ÷ TRL (default) | tokens/s |")
    print("|---|---:|---:|---:|")
    for k, label in TRAINERS.items():
        peak = statistics.median(x["peak_gb"] for x in out[k])
        tps = statistics.median(x["tok_s"] for x in out[k])
        print(f"| {label} | {peak:.2f} | {peak / trl:.2f}x | {tps:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--distill", action="store_true", help="distillation tokens/s against the FLOP roofline")
    ap.add_argument("--memory", action="store_true", help="peak memory against TRL, each in a fresh process")
    ap.add_argument("--batch", type=int, default=16, help="--memory: the batch size")
    ap.add_argument(
        "--micro-batch-tokens",
        type=int,
        default=PIECE_TOKENS,
        help="--memory: heredity's pieces (FinetuneConfig.micro_batch_tokens)",
    )
    ap.add_argument(
        "--pieces",
        help="--memory: heredity alone at each of these piece sizes instead (comma-separated: 384,256,192)",
    )
    ap.add_argument(
        "--top-k", type=int, default=64, help="--distill: tokens kept in stored full-vocabulary targets"
    )
    ap.add_argument("--child", choices=list(TRAINERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return memory_child(args)
    if args.memory:
        return pieces_bench(args) if args.pieces else memory_bench(args)
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
    h, g, p = [], [], []
    for _ in range(args.repeats):
        s, n = run_trl(args.model, data, cfg)
        g.append(n / s)
        s, n = run_heredity(args.model, data, cfg)
        h.append(n / s)
        s, n = run_heredity(args.model, data, cfg, peft_forward=True)
        p.append(n / s)
        print(
            f"TRL {g[-1]:.1f} tok/s, heredity {h[-1]:.1f}, with PEFT's forward {p[-1]:.1f}", file=sys.stderr
        )
    gm, hm, pm = statistics.median(g), statistics.median(h), statistics.median(p)
    print(
        f"\nLoRA SFT on {args.model}, {args.rows} rows, batch 8, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}\n"
    )
    print("| trainer | tokens/s | ratio |")
    print("|---|---:|---:|")
    print(f"| TRL SFTTrainer | {gm:.1f} | 1.00x |")
    print(f"| heredity, PEFT's LoRA forward | {pm:.1f} | {pm / gm:.2f}x |")
    print(f"| heredity (LoRA through engine.fastlora) | {hm:.1f} | {hm / gm:.2f}x |")


if __name__ == "__main__":
    main()
