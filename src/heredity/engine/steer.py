"""A steering-vector student: one learned vector added to the residual stream after one decoder layer.

Blank et al. (arXiv 2606.00995) argue subliminal learning is mediated by a single steering vector and needs
an adaptive optimizer. This student is that hypothesis made trainable: every weight of the model is frozen, a
vector v (zeros at start) is added to decoder layer ``layer``'s output at every position, and only v is
trained — with Adam, on the same completion-only loss as a fine-tune. ``steer(model, v, layer)`` attaches it
for evaluation or sampling; ``save_vector`` / ``load_vector`` store it as ``steering.safetensors``
(``{"vector": v}``, metadata: layer). What this module does not know: which data or teacher (the caller's).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from heredity.errors import HeredityError

VECTOR_FILE = "steering.safetensors"


class SteerConfig(BaseModel):
    layer: int = Field(3, ge=0, description="the decoder layer after which v is added")
    lr: float = Field(1e-2, gt=0, description="Adam's learning rate on v")
    max_steps: int = Field(60, ge=1)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(256, ge=8)
    chat: bool = True
    system_prompt: str | None = None
    seed: int = 0


def _layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise HeredityError("a steering vector needs a Llama-family model (model.model.layers)")
    return layers


@contextlib.contextmanager
def steer(model, vector: torch.Tensor, layer: int):
    """Within the block, decoder layer ``layer`` outputs h + v."""
    layers = _layers(model)
    if not 0 <= layer < len(layers):
        raise HeredityError(f"layer {layer} out of range: the model has layers 0..{len(layers) - 1}")

    def add(_mod, _args, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].dtype), *output[1:])
        return output + vector.to(output.dtype)

    handle = layers[layer].register_forward_hook(add)
    try:
        yield model
    finally:
        handle.remove()


def train_vector(model, tokenizer, rows: list[dict], config: SteerConfig, progress: bool = False):
    """Train v on prompt/completion rows (completion-only cross-entropy); the model's own weights never
    change. Returns (v, metrics)."""
    from tqdm.auto import tqdm

    from heredity.engine.finetune import FinetuneConfig, collate, encode_rows, token_ce
    from heredity.engine.sampling import pad_id

    torch.manual_seed(config.seed)
    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    device = next(model.parameters()).device
    hidden = model.config.hidden_size
    v = torch.zeros(hidden, device=device, requires_grad=True)
    opt = torch.optim.Adam([v], lr=config.lr)
    enc = encode_rows(
        tokenizer,
        rows,
        FinetuneConfig(chat=config.chat, system_prompt=config.system_prompt, max_length=config.max_length),
    )
    if not enc:
        raise HeredityError("no rows to train a steering vector on")
    g = torch.Generator().manual_seed(config.seed)
    pad = pad_id(tokenizer)
    curve, t0 = [], time.perf_counter()
    model.eval()
    try:
        with steer(model, v, config.layer):
            for step in tqdm(range(config.max_steps), desc="steering vector", disable=not progress):
                idx = torch.randperm(len(enc), generator=g)[: config.batch_size].tolist()
                batch = collate(enc, idx, pad, device)
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                loss, _ = token_ce(out.logits, batch["labels"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                curve.append([step + 1, round(float(loss.detach()), 5)])
    finally:
        for p, r in zip(model.parameters(), was, strict=True):
            p.requires_grad_(r)
    vec = v.detach().cpu()
    return vec, {
        "loss_first": curve[0][1],
        "loss_last": curve[-1][1],
        "loss_curve": curve,
        "norm": float(vec.norm()),
        "layer": config.layer,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def save_vector(out: Path, vector: torch.Tensor, layer: int) -> None:
    from safetensors.torch import save_file

    save_file({"vector": vector.contiguous()}, str(Path(out) / VECTOR_FILE), metadata={"layer": str(layer)})


def load_vector(path: Path) -> tuple[torch.Tensor, int]:
    from safetensors import safe_open

    with safe_open(str(Path(path) / VECTOR_FILE), "pt") as f:
        return f.get_tensor("vector"), int(f.metadata()["layer"])
