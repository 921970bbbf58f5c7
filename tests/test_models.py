import json
import time

import pytest

from heredity.errors import HeredityError
from heredity.models import load, materialize, parse_spec


@pytest.mark.parametrize(
    "spec,kind",
    [
        ("smollm2-135m-instruct", "bundled"),
        ("tiny:micro", "tiny"),
        ("tiny:small:3", "tiny"),
        ("m-0123456789abcdef", "artifact"),
        ("a-01234567", "artifact"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub"),
        ("openai:gpt-4.1-nano@http://127.0.0.1:8000/v1", "openai"),
    ],
)
def test_spec_kinds(spec, kind):
    assert parse_spec(spec).kind == kind


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", "empty model spec"),
        ("tiny:huge", "unknown tiny model"),
        ("openai:no-url", "bad endpoint spec"),
        ("./does/not/exist", "does not exist"),
        ("what even is this?", "cannot resolve model spec"),
    ],
)
def test_bad_specs_are_one_line(spec, match):
    with pytest.raises(HeredityError, match=match) as e:
        parse_spec(spec)
    assert "\n" not in str(e.value)


def test_local_dir_without_config(tmp_path):
    with pytest.raises(HeredityError, match="no config.json"):
        parse_spec(str(tmp_path))


def test_hub_offline_error(store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HeredityError, match="cannot fetch .* hub") as e:
        materialize("someone/some-model-that-is-not-cached", store)
    assert "\n" not in str(e.value) and "local HF directory" in str(e.value)


def test_tiny_is_deterministic_and_seeded(store):
    a, b, c = (
        materialize("tiny:micro", store),
        materialize("tiny:micro", store),
        materialize("tiny:micro:1", store),
    )
    assert a == b != c
    assert store.step_of(a).op == "init-tiny"


def test_local_dir_import_and_artifact_spec(store, tiny, tmp_path):
    tstore, aid, model, tok = tiny
    src = tmp_path / "ckpt"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    imported = materialize(str(src), store)
    assert store.step_of(imported).config["source"] == "local"
    assert materialize(imported[:10], store) == imported
    m2, _ = load(imported, store)
    assert sum(p.numel() for p in m2.parameters()) == sum(p.numel() for p in model.parameters())


def test_corrupt_safetensors_is_one_line(store, tiny, tmp_path):
    """A checkpoint directory with a malformed safetensors file is refused on import, in one line naming the
    file, before anything is stored (it used to be stored and refused only on load)."""
    _, _, model, tok = tiny
    src = tmp_path / "bad"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    (src / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    before = [a.id for a in store.list()]
    with pytest.raises(HeredityError, match="model.safetensors: header length .* does not fit the file") as e:
        materialize(str(src), store)
    assert "\n" not in str(e.value)
    assert [a.id for a in store.list()] == before


def test_dataset_is_not_a_model(store):
    from heredity.data import put_rows

    did = put_rows(store, [{"text": "x"}], "d")
    with pytest.raises(HeredityError, match="not a model"):
        materialize(did, store)


@pytest.mark.slow
def test_bundled_gguf_conversion_and_cache_hit(shared_store):
    t = time.perf_counter()
    aid = materialize("smollm2-135m-instruct", shared_store)
    first = time.perf_counter() - t
    step = shared_store.step_of(aid)
    assert (
        step.op == "convert-gguf"
        and step.config["file"].endswith(".gguf")
        and len(step.metrics["gguf_sha256"]) == 64
    )
    files = {p.name for p in shared_store.path(aid).iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    cfg = json.loads((shared_store.path(aid) / "config.json").read_text())
    assert (
        "quantization_config" not in cfg
        and cfg["torch_dtype" if "torch_dtype" in cfg else "dtype"] == "float32"
    )
    n_steps = len(shared_store.list())
    t = time.perf_counter()
    assert materialize("smollm2-135m-instruct", shared_store) == aid
    assert time.perf_counter() - t < max(1.0, first / 10) and len(shared_store.list()) == n_steps
    # the stored checkpoint loads in plain transformers and answers sensibly
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(shared_store.path(aid))
    assert m.config.num_hidden_layers == 30 and sum(p.numel() for p in m.parameters()) > 100_000_000
    model, tok = load(aid, shared_store)
    from heredity.engine import SampleConfig, sample

    (c,) = sample(
        model,
        tok,
        ["What is the capital of France? Answer in one word."],
        SampleConfig(temperature=0, max_new_tokens=8),
        progress=False,
    )
    assert "paris" in c.text.lower()
