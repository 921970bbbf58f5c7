"""Merge methods against hand-computed results; adapters vs merged-in models;
streaming merges with lineage."""

import pytest
import torch

from heredity.errors import HeredityError
from heredity.merge import MergeConfig, load_config, merge
from heredity.merge.merge import dare_keep, kept_count, mask_stats, topk_mask
from heredity.merge.methods import REGISTRY, TensorJob, keep_count, trim
from heredity.merge.tensors import ModelTensors


def job(base, tuned, weights=None, densities=None, **kw):
    n = len(tuned)
    return TensorJob(
        "t",
        torch.tensor(base),
        [torch.tensor(t) for t in tuned],
        weights or [1.0] * n,
        densities or [1.0] * n,
        **kw,
    )


def test_linear_and_task_arithmetic():
    j = job([0.0, 0.0], [[1.0, 2.0], [3.0, 6.0]], weights=[1.0, 3.0])
    assert REGISTRY["linear"].merge(j).tolist() == [2.5, 5.0]  # (1·1 + 3·3)/4, (2 + 18)/4
    j = job([1.0, 1.0], [[2.0, 0.0], [3.0, 1.0]], lam=0.5, normalize=False)
    assert REGISTRY["task_arithmetic"].merge(j).tolist() == [2.5, 0.5]  # 1 + .5·(1 + 2), 1 + .5·(−1 + 0)


def test_ties_sign_election_and_disjoint_mean():
    tuned = [[3.0, -2.0, 0.5, 1.0], [-1.0, -4.0, 2.0, 1.0]]
    # no trim: signs of the sums [2, −6, 2.5, 2] = [+, −, +, +]; −1 disagrees at 0 and is left out
    assert REGISTRY["ties"].merge(job([0.0] * 4, tuned, normalize=True)).tolist() == [3.0, -3.0, 1.25, 1.0]
    # density 0.5: τ1 → [3, −2, 0, 0], τ2 → [0, −4, 2, 0]; sums [3, −6, 2, 0]
    assert REGISTRY["ties"].merge(job([0.0] * 4, tuned, densities=[0.5, 0.5], normalize=True)).tolist() == [
        3.0,
        -3.0,
        2.0,
        0.0,
    ]
    assert trim(torch.tensor([1.0, -5.0, 3.0, 0.1]), 0.5).tolist() == [0.0, -5.0, 3.0, 0.0]
    # mergekit's kept count floors (at least one): 0.3 × 5 = 1.5 → 1 entry, 0.1 × 5 → 1
    assert keep_count(0.3, 5) == 1 and keep_count(0.1, 5) == 1 and keep_count(1.0, 5) == 5
    assert trim(torch.tensor([1.0, -5.0, 3.0, 0.1, 2.0]), 0.3).tolist() == [0.0, -5.0, 0.0, 0.0, 0.0]
    # a weighted sign sum of exactly 0 elects + (mergekit): at 0 the + entry 2 stays, the − entry −2 does not
    assert REGISTRY["ties"].merge(job([0.0], [[2.0], [-2.0]], normalize=True)).tolist() == [2.0]


def test_dare_drops_with_its_mask_and_restores_the_l1_norm():
    tau = torch.full((200_000,), 2.0)
    keep = dare_keep(tau.shape, 0.25, 0, "t", "m")
    assert keep.float().mean().item() == pytest.approx(0.25, abs=0.005)
    j = job([0.0] * tau.numel(), [tau.tolist()], densities=[0.25], keeps=[keep], rescale=True)
    out = REGISTRY["dare_linear"].merge(j)
    assert torch.equal(out != 0, keep)  # dropped where the mask says
    assert out.abs().sum().item() == pytest.approx(
        tau.abs().sum().item(), rel=1e-5
    )  # survivors × ‖τ‖₁ / ‖kept‖₁
    assert REGISTRY["dare_linear"].merge(
        job(
            [0.0] * 3,
            [[1.0, 2.0, 3.0]],
            densities=[0.5],
            keeps=[torch.tensor([True, False, True])],
            rescale=False,
        )
    ).tolist() == [1.0, 0.0, 3.0]  # rescale off: just dropped
    j = job(
        [0.0] * 4,
        [[1.0, 1.0, 1.0, 1.0]],
        densities=[1.0],
        keeps=[torch.zeros(4, dtype=torch.bool)],
        rescale=True,
    )
    assert REGISTRY["dare_linear"].merge(j).tolist() == [1.0] * 4  # density 1 drops nothing


def test_dare_mask_depends_only_on_seed_tensor_and_model():
    a = dare_keep((50, 40), 0.3, 7, "w", "m-1#0")
    assert torch.equal(a, dare_keep((50, 40), 0.3, 7, "w", "m-1#0"))
    assert not torch.equal(a, dare_keep((50, 40), 0.3, 7, "w", "m-2#0"))
    assert not torch.equal(a, dare_keep((50, 40), 0.3, 8, "w", "m-1#0"))
    import importlib

    mm = importlib.import_module("heredity.merge.merge")  # the module (the package exports the function)
    old = mm.DARE_BLOCK
    try:
        mm.DARE_BLOCK = 120  # 3-row blocks: chunks that cut blocks in the middle see the same rows
        whole = dare_keep((50, 40), 0.3, 7, "w", "m-1#0")
        pieces = torch.cat(
            [dare_keep((50, 40), 0.3, 7, "w", "m-1#0", slice(r, min(r + 7, 50))) for r in range(0, 50, 7)]
        )
        assert torch.equal(whole, pieces)
    finally:
        mm.DARE_BLOCK = old


def test_a_parameter_the_method_does_not_use_is_refused():
    with pytest.raises(ValueError, match="merge_method linear does not use parameter 'density'"):
        MergeConfig(merge_method="linear", models=[{"model": "a", "parameters": {"density": 0.5}}])
    with pytest.raises(ValueError, match="does not use parameter 'rescale'"):
        MergeConfig(
            merge_method="task_arithmetic",
            base_model="b",
            models=[{"model": "a"}],
            parameters={"rescale": True},
        )
    MergeConfig(
        merge_method="task_arithmetic",
        base_model="b",
        models=[{"model": "a"}],
        parameters={"normalize": True},
    )


def test_task_arithmetic_normalize_is_not_ignored():
    j = job([1.0], [[3.0], [5.0]], weights=[1.0, 3.0], normalize=True)
    assert REGISTRY["task_arithmetic"].merge(j).tolist() == [1.0 + (1 * 2 + 3 * 4) / 4]
    j = job([1.0], [[3.0], [5.0]], weights=[1.0, 3.0], normalize=False)
    assert REGISTRY["task_arithmetic"].merge(j).tolist() == [1.0 + 1 * 2 + 3 * 4]


def test_stitch_averages_over_overlapping_masks():
    masks = [torch.tensor([True, True, False, False]), torch.tensor([False, True, True, False])]
    j = job([1.0, 1.0, 1.0, 1.0], [[2.0, 3.0, 4.0, 9.0], [11.0, 21.0, 31.0, 9.0]], masks=masks)
    # τ1 = [1, 2, 3, 8], τ2 = [10, 20, 30, 8]; coordinate 1 is covered twice, 3 by neither
    assert REGISTRY["localize_stitch"].merge(j).tolist() == [2.0, 12.0, 31.0, 1.0]


def test_dataless_mask_keeps_exactly_the_top_k():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(30, 7, generator=g).abs(), "b": torch.randn(50, generator=g).abs()}
    masks = topk_mask(scores, 13)
    kept = torch.cat([scores[n][masks[n]] for n in scores])
    dropped = torch.cat([scores[n][~masks[n]] for n in scores])
    assert kept.numel() == 13 and kept.min() > dropped.max()
    stats = mask_stats([masks, masks], ["x", "y"])
    assert stats["kept_fraction"]["x"] == round(13 / 260, 6) and stats["overlap"]["x|y"] == 1.0


# ---- on stored tiny models ----------------------------------------------------------------------------


def _lora(store, base_id, seed, name):
    """A PEFT LoRA adapter on the tiny base with random (nonzero) factors, stored as an artifact."""
    from peft import LoraConfig, get_peft_model

    from heredity.models import load

    def run(ctx):
        model, tok = load(base_id, store)
        peft = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        out = ctx.output("model", "adapter", name, meta={"base": base_id})
        peft.save_pretrained(out)
        tok.save_pretrained(out)

    return store.run_step("test-lora", {"seed": seed, "name": name}, [base_id], run)["model"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from heredity.models import materialize, merge_adapter
    from heredity.store import Store

    s = Store(tmp_path_factory.mktemp("merge"))
    base = materialize("tiny:micro", s)
    a1, a2 = _lora(s, base, 1, "task-one"), _lora(s, base, 2, "task-two")
    m1, m2 = merge_adapter(s, a1), merge_adapter(s, a2)
    return s, base, (a1, a2), (m1, m2)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "localize_stitch"])
def test_merging_adapters_equals_merging_their_merged_in_models(tiny_models, method, monkeypatch):
    s, base, adapters, full = tiny_models
    params = {"density": 0.5} if method in ("ties", "dare_ties") else {}
    if (
        method == "dare_ties"
    ):  # DARE masks are keyed by the model's id, which differs between an adapter and its
        import importlib  # merged-in model: give both the same masks to compare everything else

        mm = importlib.import_module("heredity.merge.merge")
        keep = mm.dare_keep
        monkeypatch.setattr(
            mm,
            "dare_keep",
            lambda shape, d, seed, name, model, rows=None: keep(shape, d, seed, name, "x", rows),
        )

    def run(ids):
        cfg = MergeConfig(
            merge_method=method,
            base_model=base,
            models=[{"model": i, "parameters": params} for i in ids],
            localize={"sparsity": 0.05},
        )
        res = merge(s, cfg, progress=False)
        return ModelTensors(s.path(res["model"])), res

    (a, ra), (b, _) = run(adapters), run(full)
    assert a.names() == b.names()
    for n in a.names():
        torch.testing.assert_close(a.get(n), b.get(n), atol=1e-5, rtol=1e-5, msg=n)
    step = s.step_of(ra["model"], step=ra.key)  # identical bytes from both merges: the adapters' step, by key
    assert step.op == "merge" and step.inputs == [base, *adapters]
    if method == "localize_stitch":
        assert ra.metrics["kept_fraction"]["task-one"] == pytest.approx(
            0.05, abs=1e-4
        )  # k = round(0.05 · total)


def test_merged_model_loads_and_differs_from_the_base(tiny_models):
    from heredity.models import load

    s, base, adapters, _ = tiny_models
    res = merge(
        s,
        MergeConfig(
            merge_method="ties",
            base_model=base,
            models=[{"model": a} for a in adapters],
            parameters={"density": 0.3},
        ),
        progress=False,
    )
    model, tok = load(res["model"], s)
    ref, _ = load(base, s)
    ids = torch.tensor([tok("owl")["input_ids"]])
    assert not torch.allclose(model(ids).logits, ref(ids).logits)
    again = merge(
        s,
        MergeConfig(
            merge_method="ties",
            base_model=base,
            models=[{"model": a} for a in adapters],
            parameters={"density": 0.3},
        ),
        progress=False,
    )
    assert again.cached and again["model"] == res["model"]


def test_mismatches_are_one_line_errors(tiny_models, tmp_path):
    from heredity.models import materialize

    s, base, adapters, full = tiny_models
    other = materialize("tiny:small", s)
    with pytest.raises(HeredityError, match=r"tensor model\.\S+ .*shape|tensor \S+ is in one of") as e:
        merge(
            s,
            MergeConfig(merge_method="linear", models=[{"model": full[0]}, {"model": other}]),
            progress=False,
        )
    assert "\n" not in str(e.value)
    other_base = materialize("tiny:micro:7", s)
    with pytest.raises(HeredityError, match=f"trained on {base}, not on base_model {other_base}"):
        merge(
            s,
            MergeConfig(merge_method="ties", base_model=other_base, models=[{"model": a} for a in adapters]),
            progress=False,
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: ties\nbase_model: x\nmodels:\n  - model: y\n    parameters: {wieght: 1}\n")
    with pytest.raises(HeredityError, match="unknown model parameter 'wieght'"):
        load_config(bad)
    bad.write_text("merge_method: ties\nmodels:\n  - model: y\n")
    with pytest.raises(HeredityError, match="needs base_model"):
        load_config(bad)


def test_mergekit_yaml_and_the_cli(tiny_models, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from heredity.cli import app

    s, base, adapters, _ = tiny_models
    cfg = tmp_path / "ties.yaml"
    cfg.write_text(f"""
models:
  - model: {adapters[0]}
    parameters:
      weight: 1.0
      density: 0.5
  - model: {adapters[1]}
    parameters:
      weight: 0.5
      density: 0.5
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  lambda: 1.0
dtype: float32
""")
    monkeypatch.setenv("HEREDITY_HOME", str(s.home))
    r = CliRunner().invoke(app, ["merge", str(cfg), "--name", "ties-two"])
    assert r.exit_code == 0, r.output
    made = [a for a in s.list("model") if a.name == "ties-two"]
    assert len(made) == 1 and made[0].id in r.output


def test_learned_masks_on_task_data(tiny_models):
    from heredity.data import import_dataset

    s, base, adapters, _ = tiny_models
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(32)]
    import json

    path = s.home / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = import_dataset(s, path)
    cfg = MergeConfig(
        merge_method="localize_stitch",
        base_model=base,
        models=[{"model": a, "data": data} for a in adapters],
        localize={"dataless": False, "sparsity": 0.02, "steps": 3, "batch_size": 8},
    )
    res = merge(s, cfg, progress=False)
    base_t = ModelTensors(s.path(base))
    k = kept_count(base_t, 0.02)
    assert res.metrics["kept_fraction"]["task-one"] == pytest.approx(
        k / sum(torch.Size(base_t.shape(n)).numel() for n in base_t.names()), abs=1e-6
    )
    assert data in s.step_of(res["model"]).inputs


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "localize_stitch"])
def test_row_chunked_streaming_equals_whole_tensor_merging(tiny_models, monkeypatch, method):
    """Large tensors are merged in row chunks read from disk; TIES trims at the whole tensor's threshold and
    the dataless masks at the whole model's: the result must not depend on the chunking."""
    import importlib

    merge_mod = importlib.import_module(
        "heredity.merge.merge"
    )  # the module (the package exports the function)
    s, base, adapters, _ = tiny_models

    def run(tag):
        params = {"density": 0.3} if method in ("ties", "dare_ties") else {}
        if method == "dare_ties":
            params["rescale"] = True  # the L1 norms of the whole tensor, one input at a time
        cfg = MergeConfig(
            merge_method=method,
            base_model=base,
            name=f"chunk-{tag}",
            parameters=params,
            models=[{"model": a} for a in adapters],
            localize={"sparsity": 0.05},
        )
        res = merge(s, cfg, progress=False)
        return ModelTensors(s.path(res["model"])), res.metrics

    whole, m1 = run("whole")
    monkeypatch.setattr(
        merge_mod, "CHUNK_ELEMS", 300
    )  # 100 entries per input: the 259 × 32 embedding in 3-row chunks
    assert len(merge_mod.chunks(whole.shape("model.embed_tokens.weight"), 2)) == 87
    chunked, m2 = run("chunked")
    for n in whole.names():
        torch.testing.assert_close(whole.get(n), chunked.get(n), atol=1e-6, rtol=1e-6, msg=n)
    assert m1.get("kept_fraction") == m2.get("kept_fraction") and m1.get("overlap") == m2.get("overlap")


def test_another_tokenizer_is_refused(tiny_models):
    s, base, adapters, full = tiny_models

    def run(ctx):
        out = ctx.output("model", "model", "tiny-other-tokenizer")
        for f in s.path(full[0]).iterdir():
            data = f.read_bytes()
            if f.name == "tokenizer.json":
                data = data.replace(b"<|endoftext|>", b"<|end_of_text|>")
            (out / f.name).write_bytes(data)

    other = s.run_step("test-retokenize", {}, [full[0]], run)["model"]
    with pytest.raises(HeredityError, match="another tokenizer") as e:
        merge(
            s,
            MergeConfig(merge_method="ties", base_model=base, models=[{"model": full[1]}, {"model": other}]),
            progress=False,
        )
    assert "tiny-other-tokenizer" in str(e.value) and "\n" not in str(e.value)
