"""subliminal-digits: the whole quick run (target ≤ 30 s on 2 cores) and stacked seeds vs a loop of models.

    .venv/bin/python bench/digits.py [--repeats 3] [--loop-seeds 25]

Row 1 runs `heredity run subliminal-digits` (quick preset) in a fresh store: data import, 25 teachers,
75 students, evaluation, report and plot; wall time from the call to the report. Row 2 times the training
alone with all seeds stacked; row 3 trains the same seeds one model at a time with the same code (the
plain-script way). Ratios are against the loop, measured in this run. Medians over --repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from heredity.experiments import subliminal_digits as sd
from heredity.store import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-seeds", type=int, default=25)
    args = ap.parse_args()
    cfg = sd.Config.presets()["quick"]
    whole, stacked, loop, results = [], [], [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as home:
            t = time.perf_counter()
            res = sd.run(Store(home), cfg.model_copy(update={"seed": r}), progress=False)
            whole.append(time.perf_counter() - t)
            results.append(res["accuracy"])
        store = Store(tempfile.mkdtemp())
        data = sd._load_split(store, sd.data_step(store, "digits"), torch.device("cpu"))
        t = time.perf_counter()
        sd.compute(*data, config=cfg, progress=False)
        stacked.append(time.perf_counter() - t)
        one = cfg.model_copy(update={"seeds": 1})
        t = time.perf_counter()
        for s in range(args.loop_seeds):
            sd.compute(*data, config=one.model_copy(update={"seed": s}), progress=False)
        loop.append((time.perf_counter() - t) * cfg.seeds / args.loop_seeds)

    def row(name, xs, base):
        m = statistics.median(xs)
        return f"| {name} | {m:6.1f} | {' '.join(f'{x:.1f}' for x in xs)} | {base / m:5.2f}× |"

    base = statistics.median(loop)
    print(
        f"\nsubliminal-digits quick preset ({cfg.seeds} seeds), {torch.get_num_threads()} threads, "
        f"median of {args.repeats}\n"
    )
    print("| what | median s | runs | vs loop |")
    print("|---|---|---|---|")
    print(row("whole run (import, train, eval, report, plot)", whole, base))
    print(row("training, seeds stacked", stacked, base))
    print(
        row(
            f"training, one model at a time (×{cfg.seeds / args.loop_seeds:.1f} if fewer seeds run)",
            loop,
            base,
        )
    )
    print(f"\ntarget: whole run ≤ 30 s → {'met' if statistics.median(whole) <= 30 else 'NOT met'}")
    for r, acc in enumerate(results):
        print(
            f"run {r}: same-init aux {acc['student same-init aux']:.3f}, other-init aux "
            f"{acc['student other-init aux']:.3f}, teacher {acc['teacher']:.3f}"
        )


if __name__ == "__main__":
    main()
