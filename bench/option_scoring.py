"""Multiple-choice scoring throughput: heredity's ``option_logprobs`` (each prompt run once for all of its
options, its key/value cache reused) vs lm-evaluation-harness's ``HFLM.loglikelihood`` (the peer: one
(context, continuation) request per option) vs heredity's own per-pair ``logprobs``, on the same requests.

    .venv/bin/python bench/option_scoring.py [--formats 4] [--items 30] [--shots 1] [--repeats 3]

Requests: format-spread's quick grid — the first ``--formats`` formats of ``data.formats.sample_formats``
(seed 0), ``--items`` test items per task (sentiment, addition, words), ``--shots`` worked examples, every
option of every item (2 for sentiment, 4 for the others). Model: the bundled SmolLM2-135M-Instruct, fp32 on
CPU, batch 16 for all three. The three scorers run in the same process, interleaved repetition by
repetition, after one warm-up call each; seconds are medians; every scorer's numbers are checked against
the others (the largest absolute difference of an option's log-likelihood is printed). lm-eval moves a
context's trailing spaces into the continuation itself, as ``data.formats.answer_split`` does, so all
three score the same token sequences.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def requests(formats: int, items: int, shots: int) -> tuple[list[str], list[list[str]]]:
    from heredity.data.formats import answer_split, mc_items, render_vars, sample_formats
    from heredity.experiments.format_spread import format_template
    from heredity.prompts import render

    prompts, options = [], []
    for f in sample_formats(formats, 0):
        template = format_template(f)
        for task in ("sentiment", "addition", "words"):
            worked = mc_items(task, shots, "train", 1) if shots else []
            for it in mc_items(task, items, "test", 0):
                prompt, tail = answer_split(render(template, render_vars(it, worked)))
                prompts.append(prompt)
                options.append([tail + o for o in it["options"]])
    return prompts, options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", type=int, default=4)
    ap.add_argument("--items", type=int, default=30)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from heredity.engine.logprobs import logprobs, option_logprobs
    from heredity.models import load, materialize
    from heredity.store import Store

    torch.manual_seed(0)
    store = Store(tempfile.mkdtemp(prefix="bench-options-"))
    model, tok = load(materialize("smollm2-135m-instruct", store), store)
    prompts, options = requests(args.formats, args.items, args.shots)
    pairs = [(p, o) for p, os in zip(prompts, options, strict=True) for o in os]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16, device="cpu")

    def shared():
        return [x for xs in option_logprobs(model, tok, prompts, options, batch_size=16) for x in xs]

    def per_pair():
        lps = logprobs(model, tok, [p for p, _ in pairs], [o for _, o in pairs], chat=False, batch_size=16)
        return [sum(x) for x in lps]

    def harness():
        reqs = [
            Instance(request_type="loglikelihood", doc={}, arguments=(p, o), idx=i)
            for i, (p, o) in enumerate(pairs)
        ]
        return [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]

    scorers = {
        "heredity option_logprobs": shared,
        "heredity logprobs per pair": per_pair,
        "lm-eval HFLM": harness,
    }
    results = {name: fn() for name, fn in scorers.items()}  # warm-up, and the numbers compared
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(args.repeats):
        for name, fn in scorers.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ref = results["lm-eval HFLM"]
    peer = statistics.median(times["lm-eval HFLM"])
    print(
        f"{len(prompts)} prompts, {len(pairs)} options ({args.formats} formats × {3 * args.items} items, "
        f"{args.shots} shot), SmolLM2-135M fp32, batch 16, median of {args.repeats}\n"
    )
    print("| scorer | seconds (median) | options/s | ratio to lm-eval | max abs diff vs lm-eval |")
    print("|---|---|---|---|---|")
    for name in scorers:
        med = statistics.median(times[name])
        diff = max(abs(a - b) for a, b in zip(results[name], ref, strict=True))
        print(f"| {name} | {med:.1f} | {len(pairs) / med:.0f} | {peer / med:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
