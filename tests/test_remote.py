"""`openai:MODEL@URL` through the official openai client, against a small OpenAI-compatible server on loopback."""

import pytest

from heredity.engine import SampleConfig, sample
from heredity.errors import HeredityError
from heredity.models import RemoteModel, parse_spec


def _reversed(body: dict) -> list[str]:
    last = body["messages"][-1]["content"]
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
        (0, 0, "cba #0"), (0, 1, "cba #1"), (1, 0, "lwo #0"), (1, 1, "lwo #1")
    ]
    req = endpoint.seen[-1]
    assert req["model"] == "teacher-model" and req["n"] == 2 and req["max_tokens"] == 20 and req["temperature"] == 0.7
    assert req["messages"][0] == {"role": "system", "content": "You love owls."}


def test_unreachable_endpoint_is_one_line():
    model = RemoteModel("m", "http://127.0.0.1:9/v1")
    with pytest.raises(HeredityError, match="endpoint http://127.0.0.1:9/v1 failed") as e:
        sample(model, None, ["x"], SampleConfig(), progress=False)
    assert "\n" not in str(e.value)
