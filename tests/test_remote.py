"""`openai:MODEL@URL` through the official openai client, against a small
OpenAI-compatible server on loopback."""

import pytest

from heredity.engine import SampleConfig, sample
from heredity.errors import HeredityError
from heredity.models import RemoteModel, parse_spec


def _reversed(body: dict) -> list[str]:
    last = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    return [f"{last[::-1]} #{k}" for k in range(body.get("n", 1))]


@pytest.fixture
def endpoint():
    from conftest import ChatEndpoint

    with ChatEndpoint(_reversed) as ep:
        yield ep


def test_sampling_from_an_openai_compatible_endpoint(endpoint):
    spec = parse_spec(f"openai:teacher-model@{endpoint.url}")
    model = RemoteModel(spec.value, spec.base_url)
    cfg = SampleConfig(n=2, temperature=0.7, max_new_tokens=20, system_prompt="You love owls.", seed=3)
    got = sample(model, None, ["abc", "owl"], cfg, progress=False)
    assert [(c.prompt_index, c.sample_index, c.text) for c in got] == [
        (0, 0, "cba #0"),
        (0, 1, "cba #1"),
        (1, 0, "lwo #0"),
        (1, 1, "lwo #1"),
    ]
    req = endpoint.seen[-1]
    assert (
        req["model"] == "teacher-model"
        and req["n"] == 2
        and req["max_tokens"] == 20
        and req["temperature"] == 0.7
    )
    assert req["messages"][0] == {"role": "system", "content": "You love owls."}


def test_unreachable_endpoint_is_one_line():
    model = RemoteModel("m", "http://127.0.0.1:9/v1")
    with pytest.raises(HeredityError, match="endpoint http://127.0.0.1:9/v1 failed") as e:
        sample(model, None, ["x"], SampleConfig(), progress=False)
    assert "\n" not in str(e.value)


def test_raw_text_prompts_go_to_the_completions_route_as_they_are(endpoint):
    """chat=False means no chat template in process, so at an endpoint the text goes to /completions untouched
    (not wrapped as a user message, which the server would template)."""
    model = RemoteModel("base-model", endpoint.url)
    got = sample(
        model,
        None,
        ["Problem: 1+1\nSolution:"],
        SampleConfig(n=2, chat=False, system_prompt="ignored"),
        progress=False,
    )
    req = endpoint.seen[-1]
    assert (
        req["path"].endswith("/v1/completions")
        and req["prompt"] == "Problem: 1+1\nSolution:"
        and "messages" not in req
    )
    assert [c.sample_index for c in got] == [0, 1] and all(c.text for c in got)
    sample(model, None, ["hi"], SampleConfig(), progress=False)
    assert endpoint.seen[-1]["path"].endswith("/v1/chat/completions")


def test_an_endpoint_without_runtime_lora_loading_is_one_line_naming_the_fix(endpoint, tmp_path):
    with pytest.raises(
        HeredityError, match="cannot load LoRA adapters at runtime.*VLLM_ALLOW_RUNTIME_LORA_UPDATING"
    ) as e:
        RemoteModel("base-model", endpoint.url).load_adapter("a-0123456789abcdef", tmp_path)
    assert "\n" not in str(e.value)


def test_sample_step_keys_and_links_what_an_endpoint_serves(endpoint, tmp_path):
    """``serves``: the stored model an endpoint name stands for enters the step's lineage (and key); a
    raw-text step's key names the completions route, so samples made through the chat route are
    never returned for it."""
    from conftest import stored_tiny

    from heredity.engine import sample_step
    from heredity.store import Store

    store = Store(tmp_path / "h")
    tiny = stored_tiny(store, "tiny-served")
    spec = f"openai:{tiny}@{endpoint.url}"
    linked = sample_step(store, spec, ["abc"], SampleConfig(), progress=False, serves=tiny)
    plain = sample_step(store, spec, ["abc"], SampleConfig(), progress=False)
    # the same texts come back (one content-addressed artifact) from two steps: one
    # linked to the model, one not
    assert linked == plain and sorted(tuple(st.inputs) for st in store.producers(linked)) == [(), (tiny,)]
    raw = sample_step(store, spec, ["abc"], SampleConfig(chat=False), progress=False)
    routes = [st.config.get("route") for st in store.producers(raw)]
    assert "completions" in routes, "a raw-text step's key names the completions route"
    with pytest.raises(HeredityError, match="not an endpoint"):
        sample_step(store, tiny, ["abc"], SampleConfig(), progress=False, serves=tiny)
