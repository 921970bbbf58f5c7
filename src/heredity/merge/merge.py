"""``merge(store, config)``: a merge as a store step, streaming one tensor at a time.

For each tensor name of the base: read it from the base and from every input (adapters fold their LoRA
update in on the fly), apply the method, cast to ``dtype``, append to the output shard; a shard is
written once it reaches ``SHARD_BYTES``. A tensor whose pieces from all inputs together exceed ``CHUNK_ELEMS``
entries is merged in row chunks read straight from disk, so memory holds one chunk per input plus the output
shard, however many inputs there are (``bench/merge.py`` measures it); TIES's per-tensor trim then uses the
whole tensor's top-k threshold, computed one input at a time, and an L1 rescale (``rescale``) uses the whole
tensor's norms. DARE's keep-masks are drawn in fixed row blocks from a generator seeded by (seed, tensor name,
model id, block), so a model's mask is the same however the tensor is chunked and whatever the other inputs
are. Localize-and-Stitch's dataless masks are a global threshold on |τ| per input (recomputed per chunk);
learned masks are held as booleans (one byte per entry per task).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from heredity.errors import HeredityError
from heredity.merge.config import LocalizeConfig, MergeConfig
from heredity.merge.methods import REGISTRY, TensorJob, l1_factor, trim, trim_threshold
from heredity.merge.tensors import AdapterTensors, ModelTensors, open_artifact
from heredity.store.ops import op

SHARD_BYTES = 2 * 1024**3
CHUNK_ELEMS = (
    1 << 24
)  # entries of one chunk over all inputs together (16M: 64 MB per fp32 copy of the working set)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COPY_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)


def _tokenizer_digest(path: Path) -> str | None:
    f = path / "tokenizer.json"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None


def check_compatible(store, base_id: str | None, ref: ModelTensors, ids: list[str], srcs: list) -> None:
    """Same tensor names and shapes as the reference, adapters on this base, one tokenizer: or a one-line
    error."""
    names = set(ref.names())
    ref_tok = _tokenizer_digest(ref.path)
    for aid, src in zip(ids, srcs, strict=True):
        art = store.get(aid)
        if art.kind == "adapter" and base_id and art.meta.get("base") != base_id:
            raise HeredityError(
                f"{src.label} was trained on {art.meta.get('base')}, not on base_model {base_id}; "
                "merge adapters of one base"
            )
        if isinstance(src, ModelTensors):
            other = set(src.names())
            missing = sorted(names - other) or sorted(other - names)
            if missing:
                raise HeredityError(
                    f"tensor {missing[0]} is in one of {ref.label} and {src.label} but not the other; "
                    "merged models must share one architecture"
                )
            for n in sorted(names):
                if src.shape(n) != ref.shape(n):
                    raise HeredityError(
                        f"tensor {n} has shape {list(src.shape(n))} in {src.label} "
                        f"but {list(ref.shape(n))} in {ref.label}; merged models must share one architecture"
                    )
        tok = _tokenizer_digest(art.path)
        if ref_tok and tok and tok != ref_tok:
            raise HeredityError(
                f"{src.label} has another tokenizer than {ref.label}; merged models must share a tokenizer"
            )


DARE_BLOCK = 1 << 20  # entries per row block of a DARE mask (whole rows): the unit one generator draws


def dare_keep(
    shape: tuple[int, ...], density: float, seed: int, name: str, model: str, rows: slice | None = None
) -> torch.Tensor:
    """DARE's keep-mask (True with probability ``density``) of ``rows`` of tensor ``name`` for input
    ``model``.

    Drawn in fixed blocks of whole rows, each from a generator seeded by sha256(seed, name, model, block): the
    mask depends on nothing else — not on the other inputs, their number or order, nor on how the merge chunks
    the tensor."""
    shape = tuple(shape) or (1,)
    n_rows, per_row = shape[0], math.prod(shape[1:])
    br = max(1, DARE_BLOCK // max(1, per_row))
    r0, r1 = (0, n_rows) if rows is None else (rows.start or 0, min(rows.stop, n_rows))
    parts = []
    for b in range(r0 // br, (r1 - 1) // br + 1):
        a, z = b * br, min((b + 1) * br, n_rows)
        h = hashlib.sha256(f"{seed}|{name}|{model}|{b}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1)
        block = torch.rand((z - a, *shape[1:]), generator=g) < density
        parts.append(block[max(r0, a) - a : min(r1, z) - a])
    return torch.cat(parts)


def chunks(shape: tuple[int, ...], n_inputs: int = 1) -> list[slice | None]:
    """Row slices that keep one piece of every input (and the base) under ``CHUNK_ELEMS`` entries in all, so
    the working set does not grow with the number of inputs ([None]: the tensor in one piece)."""
    numel, per = math.prod(shape), max(1, CHUNK_ELEMS // (n_inputs + 1))
    if not shape or numel <= per:
        return [None]
    step = max(1, per // max(1, numel // shape[0]))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def topk_mask(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """A boolean mask per tensor keeping exactly the ``k`` largest entries over all tensors together."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[flat.topk(max(0, min(k, flat.numel()))).indices] = True
    out, o = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[o : o + size].view(scores[n].shape)
        o += size
    return out


def kept_count(base: ModelTensors, fraction: float) -> int:
    return max(1, int(round(fraction * sum(math.prod(base.shape(n)) for n in base.names()))))


def dataless_threshold(base: ModelTensors, src, fraction: float) -> float:
    """Localize without data: the k-th largest |τ| over the whole model (k = fraction · all entries); the mask
    is then |τ| ≥ it (and τ ≠ 0), recomputed chunk by chunk, so only one input's |τ| is ever held at once."""
    flat = torch.cat([(src.get(n) - base.get(n)).abs().flatten() for n in base.names()])
    k = kept_count(base, fraction)
    return float(flat.topk(min(k, flat.numel())).values[-1])


def learned_mask(
    store, base_id: str, base: ModelTensors, src, rows: list[dict], cfg: LocalizeConfig, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Localize: learn γ = σ(S) minimizing the task loss of θ_b + γ ⊙ τ + l1·Σγ, from S = ±init on the top-k
    of |τ|; keep the top ``sparsity`` of S."""
    from torch.func import functional_call

    from heredity.engine.finetune import FinetuneConfig, collate, encode_rows
    from heredity.engine.sampling import pad_id
    from heredity.models import load

    model, tok = load(base_id, store)
    model.requires_grad_(False)
    params = dict(model.named_parameters())  # the base's weights, already in memory: τ = θ_i − θ_b from them
    device = next(model.parameters()).device  # a GPU when there is one; the masks come back on the CPU
    taus = {n: src.get(n).to(device) - params[n].detach() for n in params if n in base._shapes}
    taus = {n: t for n, t in taus.items() if t.abs().max() > 0}
    if not taus:
        raise HeredityError(f"{src.label} does not differ from the base; there is nothing to localize")
    k = kept_count(base, cfg.sparsity)
    start = {n: m.to(device) for n, m in topk_mask({n: t.abs().cpu() for n, t in taus.items()}, k).items()}
    logits = {
        n: torch.where(start[n], cfg.init, -cfg.init).requires_grad_(True) for n in taus
    }  # on τ's device
    opt = torch.optim.Adam(logits.values(), lr=cfg.lr)
    enc = encode_rows(tok, rows[: cfg.examples], FinetuneConfig(chat=cfg.chat))
    pad = pad_id(tok)
    g = torch.Generator().manual_seed(0)
    for _ in tqdm(range(cfg.steps), desc=f"localize {src.label}", disable=not progress, leave=False):
        batch = collate(enc, torch.randperm(len(enc), generator=g)[: cfg.batch_size].tolist(), pad, device)
        p = {n: params[n] + torch.sigmoid(logits[n]) * taus[n] for n in taus}
        out = functional_call(model, p, args=(), kwargs=batch)
        loss = out.loss + cfg.l1 * sum(torch.sigmoid(s).sum() for s in logits.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    mask = topk_mask({n: s.detach().cpu() for n, s in logits.items()}, k)
    return {n: mask.get(n, torch.zeros(base.shape(n), dtype=torch.bool)) for n in base.names()}


class MaskStats:
    """Kept fraction per input and pairwise overlap (|A ∩ B| / min(|A|, |B|)), accumulated chunk by chunk."""

    def __init__(self, n: int):
        self.total, self.counts = 0, [0] * n
        self.both = [[0] * n for _ in range(n)]

    def add(self, masks: list[torch.Tensor]) -> None:
        self.total += masks[0].numel()
        for i, a in enumerate(masks):
            self.counts[i] += int(a.sum())
            for j in range(i + 1, len(masks)):
                self.both[i][j] += int((a & masks[j]).sum())

    def result(self, labels: list[str]) -> dict:
        n = len(labels)
        overlap = {
            f"{labels[i]}|{labels[j]}": round(
                self.both[i][j] / max(1, min(self.counts[i], self.counts[j])), 4
            )
            for i in range(n)
            for j in range(i + 1, n)
        }
        return {
            "kept_fraction": {
                lab: round(c / max(1, self.total), 6) for lab, c in zip(labels, self.counts, strict=True)
            },
            "overlap": overlap,
        }


def mask_stats(masks: list[dict[str, torch.Tensor]], labels: list[str]) -> dict:
    st = MaskStats(len(masks))
    for name in masks[0]:
        st.add([m[name] for m in masks])
    return st.result(labels)


@op(
    "merge",
    2,
    note=(
        "v2: mergekit's definitions (floor kept count, 0-sum elects +, L1 rescale, "
        "dare_ties/task_arithmetic normalize defaults); DARE masks per (seed, tensor, model)"
    ),
)
def merge(store, config: MergeConfig, progress: bool = True):
    """Run the merge as a store step (op ``merge``); returns the StepResult (output role ``model``).

    Inputs are the base (if any), every model, and every task dataset (learned masks), so the merged model's
    lineage lists them all."""
    from heredity.models import materialize
    from heredity.store import read_table

    base_id = materialize(config.base_model, store) if config.base_model else None
    if base_id and store.get(base_id).kind != "model":
        raise HeredityError(
            f"base_model {config.base_model} is an adapter; give the full model it was trained on"
        )
    ids = [materialize(e.model, store) for e in config.models]
    learned = config.merge_method == "localize_stitch" and not (config.localize or LocalizeConfig()).dataless
    data_ids = [store.resolve_id(e.data) for e in config.models] if learned else []
    inputs = ([base_id] if base_id else []) + ids + data_ids

    def run(ctx) -> dict:
        t0 = time.perf_counter()
        # derived from the config inside the step, so the step sees only what its key holds
        method = REGISTRY[config.merge_method]
        loc = config.localize or LocalizeConfig() if config.merge_method == "localize_stitch" else None
        ref = ModelTensors(store.path(base_id), base_id) if base_id else None
        srcs = [
            open_artifact(store, i, ref if ref and store.get(i).meta.get("base") == base_id else None)
            for i in ids
        ]
        if ref is None:
            ref = next((s.base if isinstance(s, AdapterTensors) else s) for s in srcs)
        check_compatible(store, base_id, ref, ids, srcs)
        labels = [store.get(i).name for i in ids]
        if len(set(labels)) < len(labels):  # fine-tunes of one base often share a name: tell them apart by id
            labels = [f"{n} {i}" for n, i in zip(labels, ids, strict=True)]
        metrics: dict = {"method": config.merge_method, "inputs": len(ids)}
        masks, thresholds, stats = None, None, MaskStats(len(srcs))
        if loc is not None:
            if loc.dataless:
                thresholds = [dataless_threshold(ref, s, loc.sparsity) for s in srcs]
            else:
                masks = [
                    learned_mask(store, base_id, ref, s, read_table(store.path(d)).to_pylist(), loc, progress)
                    for s, d in zip(srcs, data_ids, strict=True)
                ]
        name = config.name or f"merge-{config.merge_method}"
        out = ctx.output("model", "model", name, meta={"method": config.merge_method, "parents": ids})
        dtype = DTYPES[config.dtype]
        weights = [config.value(e, "weight", 1.0) for e in config.models]
        densities = [config.value(e, "density", 1.0) for e in config.models]
        lam = float(config.parameters.get("lambda", 1.0))
        normalize = bool(config.parameters.get("normalize", method.normalize))
        rescale = bool(config.parameters.get("rescale", method.rescale))
        model_keys = [
            f"{i}#{ids[:k].count(i)}" for k, i in enumerate(ids)
        ]  # the model's id (and repeat index)
        shard: dict[str, torch.Tensor] = {}
        shard_bytes, shards, weight_map = 0, [], {}

        def flush():
            nonlocal shard, shard_bytes
            if shard:
                fname = f"model-{len(shards) + 1:05d}.safetensors"
                save_file(shard, out / fname, metadata={"format": "pt"})
                shards.append(fname)
                weight_map.update({k: fname for k in shard})
                shard, shard_bytes = {}, 0

        for name_t in tqdm(
            ref.names(), desc=f"merge {config.merge_method}", disable=not progress, leave=False
        ):
            shape = tuple(ref.shape(name_t))
            pieces = chunks(shape, len(srcs))
            trim_at, scales = None, None
            if method.trims and len(pieces) > 1:  # the whole tensor's top-k threshold, one input at a time
                trim_at = [
                    trim_threshold(s.get(name_t) - ref.get(name_t), d)
                    for s, d in zip(srcs, densities, strict=True)
                ]
            if (
                rescale and (method.trims or method.drops) and len(pieces) > 1
            ):  # whole-tensor L1 norms, one input at a time
                scales = []
                for s, d, mk_ in zip(srcs, densities, model_keys, strict=True):
                    tau = s.get(name_t) - ref.get(name_t)
                    sparse = (
                        tau * dare_keep(shape, d, config.seed, name_t, mk_) if method.drops else trim(tau, d)
                    )
                    scales.append(l1_factor(tau, sparse))
                    del tau, sparse
            parts = []
            for rows in pieces:
                base_t = ref.get(name_t, rows) if base_id else None
                tuned = [s.get(name_t, rows) for s in srcs]
                mk = None
                if masks is not None:
                    mk = [m[name_t] if rows is None else m[name_t][rows] for m in masks]
                elif thresholds is not None:
                    mk = [
                        ((t - base_t).abs() >= thr) & (t != base_t)
                        for t, thr in zip(tuned, thresholds, strict=True)
                    ]
                if mk is not None:
                    stats.add(mk)
                keeps = (
                    [
                        dare_keep(shape, d, config.seed, name_t, k, rows)
                        for d, k in zip(densities, model_keys, strict=True)
                    ]
                    if method.drops
                    else None
                )
                job = TensorJob(
                    name_t,
                    base_t,
                    tuned,
                    weights,
                    densities,
                    lam,
                    normalize,
                    keeps,
                    mk,
                    trim_at,
                    rescale,
                    scales,
                )
                parts.append(method.merge(job).to(dtype))
                del tuned, base_t, mk
            t = (torch.cat(parts) if len(parts) > 1 else parts[0]).contiguous()
            shard[name_t] = t
            shard_bytes += t.numel() * t.element_size()
            if shard_bytes >= SHARD_BYTES:
                flush()
        flush()
        if loc is not None:
            metrics.update(stats.result(labels))
        metrics["mergekit"] = (
            "not a mergekit method"
            if config.merge_method == "localize_stitch"
            else "mergekit's definitions; DARE's masks from heredity's seeded generator, not mergekit's RNG"
            if method.drops
            else "mergekit's definitions (exact: tests/test_mergekit_parity.py)"
        )
        if len(shards) == 1:
            (out / shards[0]).rename(out / "model.safetensors")
        else:
            (out / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1)
            )
        src_dir = ref.path
        for f in COPY_FILES:
            if (src_dir / f).is_file():
                shutil.copy(src_dir / f, out / f)
        cfg_path = out / "config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            cfg["torch_dtype"] = cfg["dtype"] = config.dtype
            cfg_path.write_text(json.dumps(cfg, indent=2))
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        return metrics

    return store.run_step("merge", config, inputs, run, seed=config.seed)
