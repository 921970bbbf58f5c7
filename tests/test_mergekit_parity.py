"""heredity's merges equal mergekit's (0.1.5, run here in-process) on the same checkpoints and the same YAML.

The checkpoints are built so that every sum is exact in fp32 (weights and deltas on a dyadic grid): any
difference is a difference of definition, so the comparison is bit for bit. They contain the cases where
definitions part: kept counts whose density · numel has a fraction ≥ 0.5 (round vs floor), coordinates where
the weighted sign sum is exactly 0, untouched coordinates (zero deltas), and magnitude ties. DARE's masks are
random in both tools (drawn differently): both are given the same masks, derived from each delta's bits, so
everything after the draw — the L1 rescale, weighting, sign election, normalization, λ — is compared.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from heredity.merge import MergeConfig, merge
from heredity.merge.tensors import ModelTensors


def _grid(t: torch.Tensor, step: float) -> torch.Tensor:
    return torch.round(t / step) * step


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny Llama base and three fine-tunes of it as plain HF directories, every value on a dyadic grid."""
    from transformers import LlamaForCausalLM

    from heredity.models.tiny import byte_tokenizer, tiny_config

    root = tmp_path_factory.mktemp("mk")
    tok = byte_tokenizer()
    cfg = tiny_config("micro", len(tok))
    cfg.tie_word_embeddings = False  # mergekit and heredity both see an lm_head of its own
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    sd = {k: _grid(v.detach().clone(), 2**-8) for k, v in base.state_dict().items()}
    base.load_state_dict(sd)
    dirs = {}
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    dirs["base"] = root / "base"
    first = {}
    for i in range(3):
        tuned = {}
        for k, v in sd.items():
            d = _grid(torch.randn(v.shape, generator=g) * 2**-6, 2**-10)
            d[torch.rand(v.shape, generator=g) < 0.3] = 0.0  # untouched coordinates
            if i == 0:
                first[k] = d
            elif i == 1:  # where model 0 moved, model 1 often moves exactly opposite: sign sums of exactly 0
                opp = torch.rand(v.shape, generator=g) < 0.4
                d = torch.where(opp, -first[k], d)
            tuned[k] = v + d
        m = LlamaForCausalLM(cfg)
        m.load_state_dict(tuned)
        m.save_pretrained(root / f"ft{i}")
        tok.save_pretrained(root / f"ft{i}")
        dirs[f"ft{i}"] = root / f"ft{i}"
    return root, dirs


def _content_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """A keep-mask that is a function of the delta's bits: both tools draw "the same" DARE mask from it."""
    bits = delta.float().contiguous().view(torch.int32).to(torch.int64)
    return ((bits * 2654435761 + 12345) % 10007).float() / 10007 < density


def _mergekit(yaml_text: str, out: Path, monkeypatch) -> dict[str, torch.Tensor]:
    import mergekit.sparsify as sp  # a dev dependency, pinned: pip install -e '.[dev]'
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    def bernoulli(tensor, density, rescale_norm=None):
        if density >= 1:
            return tensor
        return sp.rescaled_masked_tensor(tensor.float(), _content_mask(tensor, density).float(), rescale_norm)

    monkeypatch.setattr(sp, "bernoulli", bernoulli)
    run_merge(
        MergeConfiguration.model_validate(yaml.safe_load(yaml_text)),
        str(out),
        options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False, low_cpu_memory=False, quiet=True),
    )
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def _heredity(store, yaml_text: str, dirs: dict, monkeypatch) -> tuple[dict[str, torch.Tensor], dict]:
    import importlib

    merge_mod = importlib.import_module("heredity.merge.merge")
    raw = yaml.safe_load(yaml_text)
    ids = {}
    from heredity.models import materialize

    for d in dirs.values():
        ids[str(d)] = materialize(str(d), store)
    if "base_model" in raw:
        raw["base_model"] = ids[raw["base_model"]]
    for e in raw["models"]:
        e["model"] = ids[e["model"]]
    by_id = {v: k for k, v in ids.items()}
    base_t = ModelTensors(store.path(ids[str(dirs["base"])]))

    def dare_keep(shape, density, seed, name, model, rows=None):
        src = ModelTensors(store.path(model.split("#")[0]))
        delta = src.get(name) - base_t.get(name)
        keep = _content_mask(delta, density)
        return keep if rows is None else keep[rows]

    monkeypatch.setattr(merge_mod, "dare_keep", dare_keep, raising=False)
    assert by_id  # every input is a stored import of the directory mergekit reads
    res = merge(store, MergeConfig.model_validate(raw), progress=False)
    out = ModelTensors(store.path(res["model"]))
    return {n: out.get(n) for n in out.names()}, res.metrics


CASES = {
    "linear": """
merge_method: linear
models:
  - {model: FT0, parameters: {weight: 0.5}}
  - {model: FT1, parameters: {weight: 0.25}}
  - {model: FT2, parameters: {weight: 1.0}}
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: BASE
models:
  - {model: FT0, parameters: {weight: 0.5}}
  - {model: FT1, parameters: {weight: 0.5}}
  - {model: FT2, parameters: {weight: 0.25}}
parameters: {lambda: 0.5}
dtype: float32
""",
    "task_arithmetic_normalized": """
merge_method: task_arithmetic
base_model: BASE
models:
  - {model: FT0, parameters: {weight: 0.5}}
  - {model: FT1, parameters: {weight: 1.0}}
  - {model: FT2, parameters: {weight: 0.5}}
parameters: {normalize: true}
dtype: float32
""",
    "ties": """
merge_method: ties
base_model: BASE
models:
  - {model: FT0, parameters: {weight: 1.0, density: 0.35}}
  - {model: FT1, parameters: {weight: 1.0, density: 0.35}}
  - {model: FT2, parameters: {weight: 0.5, density: 0.6}}
parameters: {lambda: 1.0}
dtype: float32
""",
    "ties_unnormalized_rescaled": """
merge_method: ties
base_model: BASE
models:
  - {model: FT0, parameters: {weight: 1.0, density: 0.35}}
  - {model: FT1, parameters: {weight: 1.0, density: 0.35}}
parameters: {normalize: false, rescale: true, lambda: 0.5}
dtype: float32
""",
    "dare_linear": """
merge_method: dare_linear
base_model: BASE
models:
  - {model: FT0, parameters: {weight: 0.5, density: 0.3}}
  - {model: FT1, parameters: {weight: 0.5, density: 0.3}}
  - {model: FT2, parameters: {weight: 0.5, density: 0.7}}
dtype: float32
""",
    "dare_ties": """
merge_method: dare_ties
base_model: BASE
models:
  - {model: FT0, parameters: {weight: 1.0, density: 0.3}}
  - {model: FT1, parameters: {weight: 1.0, density: 0.3}}
  - {model: FT2, parameters: {weight: 0.5, density: 0.5}}
parameters: {lambda: 0.5}
dtype: float32
""",
}


@pytest.mark.parametrize("case", list(CASES))
def test_equals_mergekit(checkpoints, store, tmp_path, monkeypatch, case):
    root, dirs = checkpoints
    text = CASES[case]
    for name, d in dirs.items():  # FT0 → the directory of ft0, BASE → base
        text = text.replace(name.upper(), str(d))
    ref = _mergekit(text, tmp_path / "mergekit-out", monkeypatch)
    ours, metrics = _heredity(store, text, dirs, monkeypatch)
    assert set(ours) == set(ref), set(ours) ^ set(ref)
    diff = {n: int((ours[n] != ref[n]).sum()) for n in ref}
    bad = {n: c for n, c in diff.items() if c}
    assert not bad, f"{case}: entries that differ from mergekit, per tensor: {bad}"
    assert "mergekit" in metrics["mergekit"]
    shutil.rmtree(tmp_path / "mergekit-out", ignore_errors=True)


def test_the_checkpoints_hold_the_cases_where_definitions_part(checkpoints):
    """The parity above would be empty if no tensor had a rounding kept count or an exact-zero sign sum."""
    import math

    root, dirs = checkpoints
    base = ModelTensors(dirs["base"])
    t0, t1 = ModelTensors(dirs["ft0"]), ModelTensors(dirs["ft1"])
    rounding = [n for n in base.names() if (0.35 * math.prod(base.shape(n))) % 1 >= 0.5]
    zero_sums = sum(
        int(
            ((t0.get(n) - base.get(n)) + (t1.get(n) - base.get(n)) == 0)
            .logical_and(t0.get(n) != base.get(n))
            .sum()
        )
        for n in base.names()
    )
    assert rounding and zero_sums > 1000, (rounding, zero_sums)
    assert json.loads((dirs["base"] / "config.json").read_text())["tie_word_embeddings"] is False
