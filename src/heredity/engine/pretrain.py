"""Pretraining a Llama-architecture model from scratch on a token stream (nanoGPT's recipe, HF checkpoint
out).

``pretrain(model, train_ids, val_ids, config)`` is the loop: random windows of ``context`` tokens, AdamW with
linear warmup and cosine decay to ``min_lr``, validation loss on fixed windows every ``eval_every``
iterations, samples from fixed prompts at each evaluation. It runs through ``accelerate`` (fp32 on CPU, bf16
autocast on CUDA). ``pretrain_step`` wraps it as a store step: inputs = corpus dataset + tokenizer, output = a
model.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from heredity.errors import HeredityError
from heredity.store.ops import op

# dense bf16 peak of common accelerators, for MFU (FLOP/s); unknown devices report no MFU
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


class PretrainConfig(BaseModel):
    """The model's shape and the optimization; nanoGPT's Shakespeare-char CPU setting by default."""

    hidden: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int | None = Field(None, ge=1, description="grouped-query attention; default = heads")
    intermediate: int = Field(
        352, ge=8, description="SwiGLU width (352 ≈ the parameters of a 4×128 GELU MLP)"
    )
    context: int = Field(64, ge=8, description="training window (block size) in tokens")
    max_positions: int = Field(
        256, ge=8, description="the checkpoint's context (RoPE: longer than the training window is fine)"
    )
    iters: int = Field(2000, ge=1)
    batch_size: int = Field(12, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta2: float = Field(0.99, gt=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    eval_every: int = Field(250, ge=1)
    eval_batches: int = Field(20, ge=1)
    sample_prompts: list[str] = Field(default_factory=lambda: ["The ", "def ", "In Python, "])
    sample_tokens: int = Field(48, ge=1)
    seed: int = 0

    def shape(self):
        from heredity.models.tiny import TinyPreset

        if self.hidden % self.heads:
            raise HeredityError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        return TinyPreset(
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            kv_heads=self.kv_heads or self.heads,
            intermediate=self.intermediate,
            context=max(self.max_positions, self.context),
        )


def lr_at(it: int, config: PretrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at the last iteration."""
    if it < config.warmup:
        return config.lr * (it + 1) / config.warmup
    progress = (it - config.warmup) / max(1, config.iters - config.warmup)
    return config.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (config.lr - config.min_lr)


def windows(ids: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([ids[s : s + context] for s in starts.tolist()])
    y = torch.stack([ids[s + 1 : s + 1 + context] for s in starts.tolist()])
    return x, y


def flops_per_token(model, context: int) -> float:
    """Training FLOPs per token: 6·N (non-embedding parameters) + 12·layers·hidden·context (attention), as in
    the PaLM appendix."""
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * context


def pretrain(
    model,
    tokenizer,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    config: PretrainConfig,
    progress=True,
    val_chars: int | None = None,
):
    """Train ``model`` in place; returns metrics (curves, samples, throughput)."""
    from accelerate import Accelerator

    need = config.context + 1
    if len(train_ids) < need or len(val_ids) < need:
        raise HeredityError(
            f"the corpus is too small: each split needs more than {config.context} tokens "
            f"(train {len(train_ids)}, val {len(val_ids)}); add text or lower context"
        )
    torch.manual_seed(config.seed)
    acc = Accelerator(
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        gradient_accumulation_steps=config.grad_accum,
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, config.beta2),
    )
    model, opt = acc.prepare(model, opt)
    gen = torch.Generator().manual_seed(config.seed)
    val_gen = torch.Generator().manual_seed(config.seed + 1)
    val_starts = torch.randint(
        0, len(val_ids) - need + 1, (config.eval_batches, config.batch_size), generator=val_gen
    )

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        model.eval()
        out = []
        for ids, starts in ((train_ids, None), (val_ids, val_starts)):
            total = 0.0
            for b in range(config.eval_batches):
                s = (
                    starts[b]
                    if starts is not None
                    else torch.randint(0, len(ids) - need + 1, (config.batch_size,), generator=val_gen)
                )
                x, y = windows(ids, s, config.context)
                with acc.autocast():
                    logits = model(input_ids=x.to(acc.device)).logits
                total += float(
                    F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(acc.device).reshape(-1))
                )
            out.append(total / config.eval_batches)
        model.train()
        return out[0], out[1]

    def samples() -> dict[str, str]:
        from heredity.engine.sampling import SampleConfig, sample

        m = acc.unwrap_model(model)
        m.eval()
        comps = sample(
            m,
            tokenizer,
            config.sample_prompts,
            SampleConfig(
                chat=False, temperature=0.8, top_p=0.95, max_new_tokens=config.sample_tokens, seed=config.seed
            ),
            progress=False,
        )
        m.train()
        return {p: c.text for p, c in zip(config.sample_prompts, comps, strict=True)}

    model.train()
    curve, evals, shots = [], [], []
    bar = tqdm(total=config.iters, desc="pretrain", disable=not progress or not acc.is_main_process)
    t0, tokens, train_seconds = time.perf_counter(), 0, 0.0
    for it in range(config.iters):
        for g in opt.param_groups:
            g["lr"] = lr_at(it, config)
        tstep = time.perf_counter()
        loss_sum = 0.0
        for _ in range(config.grad_accum):
            # every process draws the same num_processes batches and trains on its own one: data parallelism
            # whose global batch equals one process with grad_accum × num_processes
            draws = [
                torch.randint(0, len(train_ids) - need + 1, (config.batch_size,), generator=gen)
                for _ in range(acc.num_processes)
            ]
            x, y = windows(train_ids, draws[acc.process_index], config.context)
            with acc.accumulate(model), acc.autocast():
                logits = model(input_ids=x.to(acc.device)).logits
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)), y.to(acc.device).reshape(-1)
                )
                acc.backward(loss)
                if acc.sync_gradients and config.grad_clip:
                    acc.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            loss_sum += float(acc.reduce(loss.detach(), "mean") if acc.num_processes > 1 else loss.detach())
            tokens += x.numel() * acc.num_processes
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - tstep
        curve.append([it + 1, round(loss_sum / config.grad_accum, 4)])
        bar.update(1)
        if (it + 1) % config.eval_every == 0 or it + 1 == config.iters:
            tr, va = evaluate()
            evals.append(
                {
                    "iter": it + 1,
                    "train_loss": round(tr, 4),
                    "val_loss": round(va, 4),
                    "val_perplexity": round(math.exp(va), 2),
                }
            )
            shots.append({"iter": it + 1, "samples": samples()})
            bar.set_postfix(train=f"{tr:.3f}", val=f"{va:.3f}")
    bar.close()
    m = acc.unwrap_model(model)
    m.eval()
    tps = tokens / train_seconds if train_seconds else None
    fpt = flops_per_token(m, config.context)
    metrics = {
        "iters": config.iters,
        "train_tokens": tokens,
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(train_seconds, 1),
        "tokens_per_second": round(tps, 1) if tps else None,
        "parameters": sum(p.numel() for p in m.parameters()),
        "flops_per_token": fpt,
        "loss_curve": curve,
        "evals": evals,
        "samples": shots,
        "val_loss": evals[-1]["val_loss"],
        "val_perplexity": evals[-1]["val_perplexity"],
        "device": torch.cuda.get_device_name() if acc.device.type == "cuda" else "cpu",
    }
    if val_chars:  # nats per character: comparable across tokenizers (and to character-level models)
        metrics["val_nats_per_char"] = round(evals[-1]["val_loss"] * len(val_ids) / val_chars, 4)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in metrics["device"]), None)
    if peak and tps:
        metrics["mfu"] = round(fpt * tps / (peak * acc.num_processes), 4)
    return metrics


def corpus_texts(store, corpus_id: str) -> dict[str, list[str]]:
    """A corpus dataset's documents by split (``train``, ``val``)."""
    from heredity.store import read_table, require_columns

    table = read_table(store.path(corpus_id))
    require_columns(table, ["text", "split"], "a pretraining corpus")
    out: dict[str, list[str]] = {"train": [], "val": []}
    for t, s in zip(table.column("text").to_pylist(), table.column("split").to_pylist(), strict=True):
        out.setdefault(s, []).append(t)
    return out


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """Documents as one token stream, each followed by the ``<|endoftext|>`` separator (pretraining's
    layout)."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [eot]
    return torch.tensor(ids, dtype=torch.long)


@op("train-tokenizer", 1)
def train_tokenizer_step(store, corpus_id: str, vocab_size: int, progress=True) -> str:
    """A byte-level BPE trained on the corpus' training split, as a tokenizer artifact."""
    from heredity.models.tiny import train_bpe

    def run(ctx):
        texts = corpus_texts(store, corpus_id)["train"]
        tok = train_bpe(texts, vocab_size)
        out = ctx.output("tokenizer", "tokenizer", f"bpe-{vocab_size}", meta={"vocab_size": len(tok)})
        tok.save_pretrained(out)
        n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        n_chars = sum(len(t) for t in texts)
        return {
            "vocab_size": len(tok),
            "train_tokens": n_tokens,
            "chars_per_token": round(n_chars / n_tokens, 3),
        }

    return store.run_step(
        "train-tokenizer", {"vocab_size": vocab_size, "algorithm": "byte-level-bpe"}, [corpus_id], run
    )["tokenizer"]


@op(
    "pretrain",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
    distributed=True,
)
def pretrain_step(
    store, corpus_id: str, tokenizer_id: str, config: PretrainConfig, name: str = "pretrained", progress=True
):
    """Pretrain from scratch as a store step; returns the StepResult (output role "model")."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from heredity.models.tiny import llama_config

    if store.get(tokenizer_id).kind != "tokenizer":
        raise HeredityError(f"{tokenizer_id} is not a tokenizer artifact")

    def run(ctx):
        shape = config.shape()  # derived from the config inside the step: the key holds the config
        tok = AutoTokenizer.from_pretrained(store.path(tokenizer_id))
        texts = corpus_texts(store, corpus_id)
        train_ids, val_ids = token_stream(tok, texts["train"]), token_stream(tok, texts["val"])
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(
            llama_config(shape, len(tok), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
        )
        metrics = pretrain(
            model,
            tok,
            train_ids,
            val_ids,
            config,
            progress=progress,
            val_chars=sum(len(t) + 1 for t in texts["val"]),
        )
        out = ctx.output("model", "model", name, meta={"origin": "pretrain", "tokenizer": tokenizer_id})
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {**metrics, "corpus_train_tokens": len(train_ids), "corpus_val_tokens": len(val_ids)}

    return store.run_step("pretrain", config, [corpus_id, tokenizer_id], run, seed=config.seed)
