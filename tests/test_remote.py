"""`openai:MODEL@URL` through the official openai client, against a small OpenAI-compatible server on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from heredity.engine import SampleConfig, sample
from heredity.errors import HeredityError
from heredity.models import RemoteModel, parse_spec


class Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.seen.append(body)
        last = body["messages"][-1]["content"]
        choices = [
            {"index": k, "message": {"role": "assistant", "content": f"{last[::-1]} #{k}"}, "finish_reason": "stop"}
            for k in range(body.get("n", 1))
        ]
        payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_sampling_from_an_openai_compatible_endpoint(endpoint):
    spec = parse_spec(f"openai:teacher-model@{endpoint}")
    model = RemoteModel(spec.value, spec.base_url)
    cfg = SampleConfig(n=2, temperature=0.7, max_new_tokens=20, system_prompt="You love owls.", seed=3)
    got = sample(model, None, ["abc", "owl"], cfg, progress=False)
    assert [(c.prompt_index, c.sample_index, c.text) for c in got] == [
        (0, 0, "cba #0"), (0, 1, "cba #1"), (1, 0, "lwo #0"), (1, 1, "lwo #1")
    ]
    req = Handler.seen[-1]
    assert req["model"] == "teacher-model" and req["n"] == 2 and req["max_tokens"] == 20 and req["temperature"] == 0.7
    assert req["messages"][0] == {"role": "system", "content": "You love owls."}


def test_unreachable_endpoint_is_one_line():
    model = RemoteModel("m", "http://127.0.0.1:9/v1")
    with pytest.raises(HeredityError, match="endpoint http://127.0.0.1:9/v1 failed") as e:
        sample(model, None, ["x"], SampleConfig(), progress=False)
    assert "\n" not in str(e.value)
