import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# every step run by a test checks that its function sees nothing its key does not hold (Store.run_step)
os.environ.setdefault("HEREDITY_CHECK_KEYS", "1")

from heredity.store import Store  # noqa: E402


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "home", db_url=f"sqlite:///{tmp_path / 'home' / 'heredity.db'}")


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Store:
    """One store for the tests on the bundled SmolLM2, so it converts once per session."""
    home = Path(os.environ.get("HEREDITY_TEST_HOME") or tmp_path_factory.mktemp("shared"))
    return Store(home, db_url=f"sqlite:///{home / 'heredity.db'}")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny from-scratch model, loaded once: (store, artifact id, model, tokenizer)."""
    from heredity.models import load, materialize

    s = Store(tmp_path_factory.mktemp("tiny"))
    aid = materialize("tiny:micro", s)
    model, tok = load(aid, s)
    return s, aid, model, tok


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server (Debian package), started for the test session on a free loopback port."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; `make test` installs the Debian package postgresql")
        pytest.skip("PostgreSQL binaries not found (make test installs them)")
    root = tempfile.mkdtemp(prefix="heredity-pg-")
    data = Path(root) / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
        os.chmod(root, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(Path(root) / "log"),
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    deadline = time.time() + 30
    import sqlalchemy

    while True:
        try:
            sqlalchemy.create_engine(url).connect().close()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.3)
    yield url
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
    )
    shutil.rmtree(root, ignore_errors=True)


# ---- the lab server: a real `heredity serve` (Uvicorn) on a free loopback port --------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_tiny(store: Store, name: str, **overrides) -> str:
    """A random tiny:micro Llama with the byte tokenizer and these config overrides, as a
    stored model artifact."""
    key = {"preset": "micro", "name": name, **overrides}

    def init(ctx):
        import torch
        from transformers import LlamaForCausalLM

        from heredity.models.tiny import byte_tokenizer, tiny_config

        tok = byte_tokenizer()
        cfg = tiny_config(key["preset"], len(tok))
        for k, v in key.items():
            if k not in ("preset", "name"):
                setattr(cfg, k, v)
        torch.manual_seed(0)
        out = ctx.output("model", "model", key["name"])
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)

    return store.run_step("init-tiny", key, [], init, seed=0)["model"]


def peaked_model(store: Store) -> str:
    """A tiny model with a large init (no near-ties: greedy output is stable under batching),
    as a stored artifact."""
    return stored_tiny(store, "tiny-peaked", initializer_range=0.5)


@pytest.fixture(scope="module")
def client(live_server):
    """The official openai client on the session's live server."""
    from openai import OpenAI

    return OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(server_home):
    """The served model loaded in the test process, to check the server's numbers against."""
    from heredity.models import load

    home, aid = server_home
    model, tok = load(aid, Store(home))
    return aid, model, tok


class LiveServer:
    """`heredity serve` in a subprocess; ``url`` is its base address."""

    def __init__(self, home: Path, env: dict | None = None, args: tuple = ()):
        self.home, self.port = Path(home), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.home / f"server-{self.port}.log", "w")  # noqa: SIM115
        e = {k: v for k, v in os.environ.items() if k not in ("HEREDITY_DB_URL", "HEREDITY_API_KEY")}
        e.update(HEREDITY_HOME=str(home), **(env or {}))
        exe = Path(sys.executable).parent / "heredity"
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(self.port), *args],
            env=e,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import httpx

        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {Path(self.log.name).read_text()[-2000:]}"
                )
            try:
                httpx.get(self.url + "/login", timeout=2)
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server_home(tmp_path_factory) -> tuple[Path, str]:
    """A store with the peaked tiny model: (HEREDITY_HOME, model id)."""
    home = tmp_path_factory.mktemp("serve")
    aid = peaked_model(Store(home))
    return home, aid


@pytest.fixture(scope="session")
def live_server(server_home):
    srv = LiveServer(server_home[0])
    yield srv
    srv.stop()


class ChatEndpoint:
    """A minimal OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions`` server on a free loopback
    port (a thread), for tests of code that talks to endpoints: ``reply(body)`` gives the choices' texts;
    every request body is kept in ``seen`` (with its ``path``); any other route is a 404. Use as a context
    manager: ``with ChatEndpoint(reply) as ep: ep.url``."""

    def __init__(self, reply):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append({**body, "path": self.path})
                if self.path.endswith("/chat/completions"):
                    choices = [
                        {
                            "index": k,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                        for k, text in enumerate(reply(body))
                    ]
                    kind = "chat.completion"
                elif self.path.endswith("/completions"):
                    choices = [
                        {"index": k, "text": text, "finish_reason": "stop"}
                        for k, text in enumerate(reply(body))
                    ]
                    kind = "text_completion"
                else:  # no other route (as a server without runtime LoRA loading answers /load_lora_adapter)
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"detail": "Not Found"}')
                    return
                payload = json.dumps(
                    {"id": "x", "object": kind, "created": 0, "model": body["model"], "choices": choices}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
