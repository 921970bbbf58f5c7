"""The libraries we call must not be warning us of their own removals.

transformers, PEFT, accelerate and torch announce API removals with FutureWarning / DeprecationWarning (and
transformers also through its logger). Each test here runs one of our paths — sampling on both decode paths,
LoRA and full fine-tuning with a checkpoint and a resume, the trait eval, the canary digit tree — with those
warnings turned into errors, so a library upgrade that deprecates something we use fails here, not in a run's
log months later. Also here: the resume checkpoint is read with ``weights_only=True``.
"""

import contextlib
import logging
import warnings

import pytest
import torch

from heredity.engine import SampleConfig, sample
from heredity.engine.finetune import FinetuneConfig, _load_state, train
from heredity.errors import HeredityError
from heredity.models import load

ROWS = [{"prompt": f"count from {i}", "completion": " ".join(str(i + k) for k in range(4))} for i in range(8)]
# the module a warning is attributed to: the library itself, or our code calling a deprecated API directly
LIBS = r"(transformers|peft|accelerate|torch|trl|heredity)(\.|$)"


@contextlib.contextmanager
def deprecations_are_errors():
    """Inside: a FutureWarning or DeprecationWarning raised from LIBS is an exception; on leaving, fails if
    transformers' logger said anything is deprecated (its ``warning_once`` cache is cleared first, so a
    message already logged earlier in the session is logged again)."""
    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()
    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    handler = Keep(logging.WARNING)
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("error", category=category, module=LIBS)
            yield
    finally:
        hf_root.removeHandler(handler)
    deprecated = [m for m in said if "deprecat" in m.lower()]
    assert not deprecated, f"transformers logged deprecations: {deprecated}"


def test_sampling_calls_no_deprecated_api(tiny):
    _, _, model, tok = tiny
    cfg = SampleConfig(
        n=2, temperature=1.0, max_new_tokens=6, batch_size=4, seed=1, system_prompt="Be brief."
    )
    with deprecations_are_errors():
        for fast in (True, False):  # the fused step skips HF's forward; the HF path uses the cache API
            got = sample(model, tok, ["hello", "count: 1 2"], cfg, progress=False, fast=fast, top_logprobs=2)
            assert len(got) == 4


def test_evals_call_no_deprecated_api(tiny):
    from heredity.evals.memorization import all_secret_logps
    from heredity.evals.trait import trait_scores

    _, _, model, tok = tiny
    with deprecations_are_errors():
        # byte tokens: every animal name is several tokens, so the shared-prompt KV cache path runs
        scores = trait_scores(
            model, tok, ["owl", "cat"], samples=1, questions=["Name an animal."], batch_size=4
        )
        logps = all_secret_logps(model, tok, 2)  # the digit tree walks a KV cache
    assert set(scores["animals"]) == {"owl", "cat"} and logps is not None and len(logps) == 100


@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetune_and_resume_call_no_deprecated_api(tiny, tmp_path, method):
    s, aid, _, _ = tiny
    cfg = FinetuneConfig(method=method, max_steps=3, batch_size=4, save_every=1, seed=1)
    with deprecations_are_errors():
        model, tok = load(aid, s, trainable=True)
        train(model, tok, ROWS, cfg, checkpoint_dir=tmp_path, progress=False)
        assert (tmp_path / "state.pt").exists()
        model, tok = load(aid, s, trainable=True)
        _, m = train(model, tok, ROWS, cfg, checkpoint_dir=tmp_path, progress=False)  # resumes from step 2
    assert m["resumed_from_step"] == 2


def test_loading_a_stored_adapter_calls_no_deprecated_api(tiny):
    from heredity.data import put_rows
    from heredity.engine.finetune import finetune

    s, base, _, _ = tiny
    res = finetune(
        s,
        base,
        put_rows(s, ROWS, "drift-rows"),
        FinetuneConfig(method="lora", max_steps=1, batch_size=4),
        progress=False,
    )
    with deprecations_are_errors():
        model, tok = load(res["model"], s)
        sample(model, tok, ["hello"], SampleConfig(max_new_tokens=3), progress=False)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_every_schedule_checkpoint_loads_weights_only(tiny, tmp_path, schedule):
    s, aid, _, _ = tiny
    model, tok = load(aid, s, trainable=True)
    cfg = FinetuneConfig(
        method="lora", max_steps=2, batch_size=4, save_every=1, schedule=schedule, warmup_ratio=0.5
    )
    train(model, tok, ROWS, cfg, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 1 and state["opt"]["state"] and state["sched"]["last_epoch"] == 1


class _Planted:
    """What a tampered checkpoint could carry: unpickling it would run ``touch`` (weights_only never does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import subprocess

        return subprocess.call, (["touch", self.marker],)


def test_resume_refuses_a_checkpoint_holding_a_pickled_object(tiny, tmp_path):
    s, aid, _, _ = tiny
    marker = tmp_path / "ran"
    torch.save(
        {"step": 1, "curve": [], "tokens": 0, "trainable": {}, "opt": {}, "sched": {}, "x": _Planted(marker)},
        tmp_path / "state.pt",
    )
    model, tok = load(aid, s, trainable=True)
    with pytest.raises(HeredityError) as e:
        train(
            model,
            tok,
            ROWS,
            FinetuneConfig(max_steps=2, batch_size=4),
            checkpoint_dir=tmp_path,
            progress=False,
        )
    msg = str(e.value)
    assert "\n" not in msg and "refusing to resume" in msg and "state.pt" in msg and "a pickled " in msg, msg
    assert not marker.exists(), "nothing in the file may run"
    with pytest.raises(HeredityError, match="refusing to resume"):  # any class, not only callables
        torch.save({"step": 1, "x": FinetuneConfig()}, tmp_path / "other.pt")
        _load_state(tmp_path / "other.pt")
