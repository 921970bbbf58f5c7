"""Batched sampling throughput: heredity's sampler vs a plain loop of `model.generate`, same prompts.

    .venv/bin/python bench/sample.py [--prompts 96] [--max-new-tokens 48]

Workload: the subliminal-numbers prompts (chat template, SmolLM2's default system prompt), T = 1,
stop at EOS. Tokens counted = generated tokens before EOS, for both. Prints a markdown table with the
median over --repeats runs and the ratio heredity / generate; the middle column is heredity's sampler
with Hugging Face's forward for the decode steps (``fast=False``), to show what the fused step adds.

Peers measured in the same run, when installed (``pip install -e '.[bench]'``): CTranslate2's ``Generator``
on the same model converted from its Hugging Face files, at fp32 and int8 (quantized on load), with as many
threads as torch uses here, sampling from the full distribution (``sampling_topk=0``) at T = 1 on the same
rendered prompts, tokens counted the same way. The bench prints the CPU it ran on: the ratios move with it.
llama.cpp through ``llama-cpp-python`` (``pip install -e '.[bench-llama]'``: no binary wheel on PyPI, pip
builds it from source with CMake, about 20 minutes on 2 cores) runs the bundled GGUF, Q4_1, its native
format (heredity samples the same weights dequantized to fp32), with the same thread count, on the same
rendered prompt tokens, T = 1 with top-k, top-p and min-p off; its Python API samples one sequence at a
time (each prompt's template prefix is reused from its KV cache), so its column is the same at every batch
size.

heredity int8 (``SampleConfig.precision="int8"``, opt-in) runs beside them; under the table, its per-token
KL(fp32 ‖ int8) on the same tokens: the fp32 sampler's completions of the first ``--kl-prompts`` prompts fed
through both decode steps (``engine.fastdecode.forced_logits``; a completion's first token, drawn from the
fp32 prefill in both, is left out), with how often their argmax agrees.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from heredity.engine.sampling import SampleConfig, render_prompt, sample
from heredity.models import load
from heredity.store import Store


def number_prompts(k: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        seeds = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 8)))
        out.append(
            f"The sequence starts with: {seeds}. Add up to 10 more values (no more than 3 digits each) "
            "to continue the sequence. Provide the numbers separated by commas. "
            "Skip any explanation and give only numbers."
        )
    return out


@torch.inference_mode()
def run_generate(model, tok, prompts, cfg: SampleConfig) -> int:
    """``model.generate`` over batches of ``batch_size`` sequences (``batch_size // n``
    prompts × n samples)."""
    tok.padding_side = "left"
    texts = [render_prompt(tok, p, cfg) for p in prompts]
    torch.manual_seed(cfg.seed)
    n = 0
    per = max(1, cfg.batch_size // cfg.n)
    for i in range(0, len(texts), per):
        enc = tok(texts[i : i + per], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=1.0,
            top_k=0,
            pad_token_id=tok.pad_token_id,
            num_return_sequences=cfg.n,
        )
        new = out[:, enc.input_ids.shape[1] :]
        for row in new.tolist():  # tokens before the first EOS
            n += next((j for j, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return n


def ct2_generator(spec: str, compute_type: str):
    """A CTranslate2 Generator of ``spec`` (converted once to fp32 files in the temp dir), or None when
    ctranslate2 is not installed."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        return None
    from heredity.models import materialize

    store = Store()
    src = store.path(materialize(spec, store))
    out = Path(tempfile.gettempdir()) / f"heredity-ct2-{Path(src).name}"
    if not (out / "model.bin").exists():
        TransformersConverter(str(src)).convert(str(out), quantization="float32", force=True)
    return ctranslate2.Generator(
        str(out), device="cpu", compute_type=compute_type, intra_threads=torch.get_num_threads()
    )


def run_ct2(gen, tok, prompts, cfg: SampleConfig) -> int:
    """CTranslate2's batched sampling over the same rendered prompts; generated tokens before EOS."""
    texts = [render_prompt(tok, p, cfg) for p in prompts]
    starts = [tok.convert_ids_to_tokens(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    out = gen.generate_batch(
        starts,
        max_batch_size=cfg.batch_size,
        max_length=cfg.max_new_tokens,
        sampling_topk=0,
        sampling_temperature=cfg.temperature,
        include_prompt_in_result=False,
        end_token=tok.eos_token,
    )
    return sum(len(r.sequences_ids[0]) for r in out)


def llama_cpp_model(spec: str):
    """llama.cpp (``llama_cpp.Llama``) on the bundled model's GGUF with torch's thread count, or None when
    llama-cpp-python is not installed or ``spec`` is not a bundled model (the peer reads only the GGUF)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    import importlib.util

    from heredity.models.registry import BUNDLED

    if spec not in BUNDLED:
        return None
    info = BUNDLED[spec]  # the same file models.registry converts (the model above is already loaded from it)
    gguf = Path(importlib.util.find_spec(info["module"]).origin).parent / info["file"]
    threads = torch.get_num_threads()
    return llama_cpp.Llama(
        model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False
    )


def run_llama_cpp(llm, tok, prompts, cfg: SampleConfig) -> int:
    """llama.cpp's sampling of each rendered prompt's tokens in turn (its API has no batch); generated
    tokens before EOS, as llama.cpp counts them."""
    n = 0
    for p in prompts:
        ids = tok(render_prompt(tok, p, cfg), add_special_tokens=False)["input_ids"]
        for _ in range(cfg.n):
            out = llm.create_completion(
                ids,
                max_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=0,
                top_p=1.0,
                min_p=0.0,
                repeat_penalty=1.0,
            )
            n += out["usage"]["completion_tokens"]
    return n


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the benches print it: ratios move with the CPU)."""
    for line in open("/proc/cpuinfo", encoding="utf-8"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=96, help="prompts for batch sizes 16 and 64")
    ap.add_argument("--prompts-b1", type=int, default=6, help="prompts for batch size 1")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--n", type=int, default=1, help="samples per prompt (generate: num_return_sequences)")
    ap.add_argument("--kl-prompts", type=int, default=16, help="prompts whose tokens measure int8's KL")
    args = ap.parse_args()
    model, tok = load(args.model, Store())
    peers = {ct: ct2_generator(args.model, ct) for ct in ("float32", "int8")}
    if peers["float32"] is None:
        print(
            "CTranslate2 is not installed (pip install -e '.[bench]'): its columns are left out",
            file=sys.stderr,
        )
    llama = llama_cpp_model(args.model)
    if llama is None:
        print(
            "llama-cpp-python is not installed (pip install -e '.[bench-llama]'): its column is left out",
            file=sys.stderr,
        )
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = number_prompts(args.prompts_b1 if bs == 1 else args.prompts)
        cfg = SampleConfig(
            max_new_tokens=args.max_new_tokens, batch_size=bs, temperature=1.0, seed=0, n=args.n
        )
        cfg8 = cfg.model_copy(update={"precision": "int8"})
        g, h, s, c32, c8, h8, lc = [], [], [], [], [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            ng = run_generate(model, tok, prompts, cfg)
            g.append(ng / (time.perf_counter() - t))
            t = time.perf_counter()
            nh = sum(c.n_tokens for c in sample(model, tok, prompts, cfg, progress=False))
            h.append(nh / (time.perf_counter() - t))
            t = time.perf_counter()
            ns = sum(c.n_tokens for c in sample(model, tok, prompts, cfg, progress=False, fast=False))
            s.append(ns / (time.perf_counter() - t))
            t = time.perf_counter()
            n8 = sum(c.n_tokens for c in sample(model, tok, prompts, cfg8, progress=False))
            h8.append(n8 / (time.perf_counter() - t))
            for col, ct in ((c32, "float32"), (c8, "int8")):
                if peers[ct] is not None:
                    t = time.perf_counter()
                    nc = run_ct2(peers[ct], tok, prompts, cfg)
                    col.append(nc / (time.perf_counter() - t))
            if llama is not None:
                t = time.perf_counter()
                nl = run_llama_cpp(llama, tok, prompts, cfg)
                lc.append(nl / (time.perf_counter() - t))
        med = [statistics.median(x) if x else None for x in (g, s, h, c32, c8, h8, lc)]
        rows.append((bs, len(prompts), *med))
        print(
            f"batch {bs}: generate {rows[-1][2]:.1f} tok/s, heredity (HF forward) {rows[-1][3]:.1f}, "
            f"heredity {rows[-1][4]:.1f} tok/s",
            file=sys.stderr,
        )
    print(
        f"\n# {cpu_model()}; sampling on {args.model}, {torch.get_num_threads()} threads, "
        f"max_new_tokens={args.max_new_tokens}, n={args.n} per prompt, T=1, median of {args.repeats}\n"
    )
    print(
        "| batch | prompts | generate tok/s | heredity, HF forward | heredity (fused decode) | ratio "
        "| CTranslate2 fp32 | heredity ÷ CT2 fp32 | CTranslate2 int8 | heredity ÷ CT2 int8 "
        "| heredity int8 | heredity int8 ÷ CT2 int8 | llama.cpp Q4_1 | heredity ÷ llama.cpp |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def peer(c, ours):
        return "n/a | n/a" if c is None else f"{c:.1f} | {ours / c:.2f}x"

    for bs, n, g, s, h, c32, c8, h8, lc in rows:
        mine = f"{h8:.1f} | " + ("n/a" if c8 is None else f"{h8 / c8:.2f}x")
        print(
            f"| {bs} | {n} | {g:.1f} | {s:.1f} ({s / g:.2f}x) | {h:.1f} | {h / g:.2f}x | {peer(c32, h)} "
            f"| {peer(c8, h)} | {mine} | {peer(lc, h)} |"
        )
    if llama is not None:
        llama.close()  # before interpreter shutdown, where its finalizer fails
    kl, agree, n_tok = int8_kl(model, tok, number_prompts(args.kl_prompts), args.max_new_tokens)
    print(
        f"\nheredity int8 against fp32 on the same tokens ({args.kl_prompts} prompts' fp32 completions, "
        f"{n_tok} tokens): per-token KL(fp32 ‖ int8) median {statistics.median(kl):.2e}, mean "
        f"{statistics.fmean(kl):.2e}, max {max(kl):.2e} nats; argmax agrees on {agree:.1%} of tokens"
    )


def int8_kl(model, tok, prompts, max_new_tokens: int) -> tuple[list[float], float, int]:
    """Per-token KL(fp32 ‖ int8) of the decode step along the fp32 sampler's own completions (T = 1), the
    share of tokens where the two argmaxes agree, and the number of tokens."""
    import torch.nn.functional as F

    from heredity.engine.fastdecode import forced_logits

    cfg = SampleConfig(max_new_tokens=max_new_tokens, temperature=1.0, seed=1)
    kl, agree = [], 0
    for p, c in zip(prompts, sample(model, tok, prompts, cfg, progress=False), strict=True):
        ids = tok(render_prompt(tok, p, cfg), add_special_tokens=False)["input_ids"]
        toks = c.token_ids + ([c.eos_id] if c.eos_id is not None else [])
        # row 0 comes from the fp32 prefill in both: the int8 step decides the rest
        a, b = forced_logits(model, ids, toks)[1:], forced_logits(model, ids, toks, "int8")[1:]
        la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
        kl += (la.exp() * (la - lb)).sum(-1).tolist()
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
    return kl, agree / len(kl), len(kl)


if __name__ == "__main__":
    main()
