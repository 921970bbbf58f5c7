"""The lab server against web pages and browsers: cross-site requests (Origin, Sec-Fetch-Site, non-JSON
bodies), artifact files served as inert content, nosniff everywhere, browser sessions that expire and are
bounded, wrong keys rate-limited, short keys refused, no store path in an error, symlinks refused on import,
and two turns written at once on one conversation (one stored, the other a 409, on SQLite and PostgreSQL)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import peaked_model
from fastapi.testclient import TestClient

from heredity.errors import HeredityError
from heredity.server.app import AuthFailures, Sessions, Settings, create_app
from heredity.store import Store

KEY = "k" * 8 + "-0123456789abcdef"  # long enough for the server's minimum
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def home_store(tmp_path) -> Store:
    home = tmp_path / "home"
    return Store(home, db_url=f"sqlite:///{home / 'heredity.db'}")


def _app(store: Store, **settings):
    return create_app(store, Settings(allowed_hosts=["testserver"], **settings))


# ---- cross-site requests -----------------------------------------------------------------------------------


def test_cross_site_state_changes_are_refused(home_store):
    """A page elsewhere (another host, another port, a sandboxed "null" origin, or a browser that says the
    request is cross-site or same-site) cannot change anything; a request with no Origin (curl, the openai
    client) or from the server's own origin can; reads are not refused (a browser keeps their answers from
    the other site anyway)."""
    cid = "c-0123456789abcdef"
    with TestClient(_app(home_store)) as c:
        for origin in (
            "http://evil.example",
            "http://testserver:8080",
            "https://testserver:444",
            "http://localhost",
            "null",
            "file://",
            "http://testserver.evil.example",
        ):
            h = {"Origin": origin}
            for method, path, body in (
                ("POST", "/api/export", {}),
                ("POST", "/v1/unload_lora_adapter", {"lora_name": "x"}),
                ("PUT", f"/api/conversations/{cid}/messages/1/feedback", {"rating": 1}),
                ("POST", "/api/conversations", {"model": "m-0000000000000000"}),
            ):
                r = c.request(method, path, json=body, headers=h)
                assert r.status_code == 403, (origin, path, r.status_code)
                err = r.json()["error"]
                assert err["code"] == "cross_site_request" and "\n" not in err["message"]
                assert "no Origin header" in err["message"], err["message"]
            assert c.delete(f"/api/conversations/{cid}", headers=h).status_code == 403
            assert c.get("/api/conversations", headers=h).status_code == 200  # a read
        for site in ("same-site", "cross-site"):
            r = c.post("/api/export", json={}, headers={"Sec-Fetch-Site": site})
            assert r.status_code == 403 and "Sec-Fetch-Site" in r.json()["error"]["message"], site
        # the server's own pages, a user typing a URL, and clients without Origin reach the
        # route (409: nothing rated)
        for h in (
            {},
            {"Origin": "http://testserver"},
            {"Sec-Fetch-Site": "none"},
            {"Origin": "http://testserver:80", "Sec-Fetch-Site": "same-origin"},
        ):
            assert c.post("/api/export", json={}, headers=h).status_code == 409, h
    with TestClient(
        _app(home_store), base_url="http://127.0.0.1:8000"
    ) as c:  # a loopback server with its port
        assert c.post("/api/export", json={}, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 409
        for origin in ("http://127.0.0.1:3000", "http://localhost:8000", "http://127.0.0.1"):
            assert c.post("/api/export", json={}, headers={"Origin": origin}).status_code == 403, origin


def test_a_session_cookie_does_not_carry_a_same_site_request(home_store):
    """SameSite=Strict sends the cookie from any page on the same site (localhost:3000 → localhost:8000); the
    Origin check refuses those requests all the same."""
    with TestClient(
        _app(home_store, api_key=KEY), base_url="http://127.0.0.1:8000", follow_redirects=False
    ) as c:
        r = c.post("/login", data={"key": KEY}, headers={"Origin": "http://127.0.0.1:8000"})
        assert r.status_code == 303
        cookie = {"Cookie": f"heredity_key={r.cookies['heredity_key']}"}
        c.cookies.clear()
        assert c.post("/api/export", json={}, headers=cookie).status_code == 409  # the session works
        for extra in ({"Origin": "http://127.0.0.1:3000"}, {"Sec-Fetch-Site": "same-site"}):
            r = c.post("/api/export", json={}, headers={**cookie, **extra})
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request", extra
        assert (
            c.post("/login", data={"key": KEY}, headers={"Origin": "http://evil.example"}).status_code == 403
        )


def test_json_routes_need_a_json_content_type(home_store):
    """A page can post text/plain or a form without a CORS preflight; JSON routes refuse such bodies (415),
    even when they hold valid JSON. The login form still takes its form."""
    body = json.dumps({"name": "x"})
    with TestClient(_app(home_store), follow_redirects=False) as c:
        for ctype in (
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            None,
        ):
            headers = {"Content-Type": ctype} if ctype else {}
            r = c.post("/api/export", content=body, headers=headers)
            assert r.status_code == 415, (ctype, r.status_code)
            assert "Content-Type: application/json" in r.json()["error"]["message"]
        r = c.post("/api/export", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert r.status_code == 409  # reached the route
        assert c.post("/login", data={"key": "", "next": "/lineage"}).status_code == 303


# ---- what every answer and every artifact file carries -----------------------------------------------------


def _web_files(ctx):
    out = ctx.output("report", "report", "web-files")
    (out / "evil.html").write_text("<script>alert(document.cookie)</script>")
    (out / "pic.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    (out / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (out / "config.json").write_text('{"a": 1}')
    (out / "notes.md").write_text("# notes <script>alert(1)</script>")
    (out / "data.bin").write_bytes(b"<html><script>alert(1)</script></html>")
    return {}


def test_artifact_files_are_served_inert(home_store):
    """An imported model directory may hold an .html or .svg: the server never lets it run in its origin."""
    aid = home_store.run_step("web-files-test", {"v": 1}, [], _web_files)["report"]
    with TestClient(_app(home_store)) as c:
        for name, media, disposition in (
            ("evil.html", "text/html", "attachment"),
            ("pic.svg", "image/svg+xml", "attachment"),
            ("data.bin", "application/octet-stream", "attachment"),
            ("plot.png", "image/png", "inline"),
            ("config.json", "application/json", "inline"),
            ("notes.md", "text/plain", "inline"),
        ):
            r = c.get(f"/artifacts/{aid}/files/{name}")
            assert r.status_code == 200, name
            assert r.headers["content-type"].startswith(media), (name, r.headers["content-type"])
            assert r.headers["content-disposition"].startswith(disposition), (
                name,
                r.headers["content-disposition"],
            )
            assert r.headers["x-content-type-options"] == "nosniff"
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "sandbox" in csp, name


def test_every_answer_carries_nosniff(home_store):
    with TestClient(_app(home_store)) as c:
        for r in (
            c.get("/v1/models"),
            c.get("/static/common.js"),
            c.get("/api/conversations/c-0000000000000000"),
            c.get("/v1/models", headers={"Host": "evil.example"}),
            c.get("/login"),
        ):
            assert r.headers["x-content-type-options"] == "nosniff", r.url
            assert r.headers["x-frame-options"] == "DENY", r.url


# ---- sessions, wrong keys, short keys ----------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_sessions_expire_and_are_bounded():
    clock = Clock()
    s = Sessions(max_age=3600, limit=3, clock=clock)
    a = s.new()
    clock.t += 10
    b, c = s.new(), s.new()
    assert s.valid(a) and s.valid(b) and s.valid(c) and not s.valid("forged") and not s.valid(None)
    d = s.new()  # a fourth evicts the oldest
    assert not s.valid(a) and s.valid(d) and len(s) == 3
    s.discard(b)
    assert not s.valid(b)
    clock.t += 3600 - 5  # c and d are 3595 s old
    assert s.valid(c)
    clock.t += 10
    assert not s.valid(c) and not s.valid(d) and len(s) == 0


def test_a_login_session_expires_and_old_ones_are_evicted(home_store):
    app = _app(home_store, api_key=KEY, session_hours=12, max_sessions=2)
    clock = Clock()
    app.state.sessions.clock = clock
    with TestClient(app, follow_redirects=False) as c:

        def login() -> dict:
            r = c.post("/login", data={"key": KEY})
            assert r.status_code == 303 and "max-age=43200" in r.headers["set-cookie"].lower()
            token = r.cookies["heredity_key"]
            c.cookies.clear()
            return {"Cookie": f"heredity_key={token}"}

        first, second = login(), login()
        assert c.get("/api/conversations", headers=first).status_code == 200
        third = login()  # at most two sessions: the first is evicted
        assert c.get("/api/conversations", headers=first).status_code == 401
        assert c.get("/api/conversations", headers=second).status_code == 200
        clock.t += 12 * 3600 + 1
        assert c.get("/api/conversations", headers=third).status_code == 401, "a session expires after 12 h"


def test_wrong_keys_are_rate_limited(home_store):
    """Too many wrong keys from one address (login form or Bearer) → 429 with Retry-After, even for the right
    key, until a minute has passed; a live session is not affected."""
    app = _app(home_store, api_key=KEY, max_auth_failures=3)
    clock = Clock()
    app.state.auth_failures.clock = clock
    with TestClient(app, follow_redirects=False) as c:
        good = c.post("/login", data={"key": KEY})
        session = {"Cookie": f"heredity_key={good.cookies['heredity_key']}"}
        c.cookies.clear()
        for _ in range(3):
            assert c.post("/login", data={"key": "wrong-key-guess-0000"}).status_code == 401
        r = c.post("/login", data={"key": KEY})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "too many wrong" in r.text
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
        assert c.get("/api/conversations", headers=session).status_code == 200
        clock.t += 61
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        for _ in range(3):
            assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 429
        assert c.post("/login", data={"key": KEY}).status_code == 429


def test_auth_failures_forget_old_failures_and_addresses():
    clock = Clock()
    f = AuthFailures(limit=2, window=60, max_addresses=2, clock=clock)
    f.add("a")
    clock.t += 30
    f.add("a")
    assert f.retry_after("a") == pytest.approx(30)
    clock.t += 31
    assert f.retry_after("a") == 0
    f.add("b")
    f.add("c")
    f.add("c")
    assert f.retry_after("c") > 0 and "a" not in f._seen  # at most two addresses tracked


def test_a_short_api_key_is_refused_at_start(tmp_path):
    with pytest.raises(HeredityError, match="at least 16") as e:
        Settings(api_key="s3cret").check()
    assert "\n" not in str(e.value) and "s3cret" not in str(e.value)
    Settings(api_key=KEY).check()
    env = {**os.environ, "HEREDITY_HOME": str(tmp_path), "HEREDITY_API_KEY": "s3cret"}
    r = subprocess.run(
        [str(Path(sys.executable).parent / "heredity"), "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "HEREDITY_API_KEY" in r.stderr, r.stderr


# ---- errors and imports ------------------------------------------------------------------------------------


def test_errors_do_not_show_the_store_path(home_store):
    home = str(home_store.home.resolve())
    with TestClient(_app(home_store)) as c:
        for r in (
            c.post("/v1/chat/completions", json={"model": "m-0000000000000000", "messages": HELLO}),
            c.post("/api/conversations", json={"model": "m-0000000000000000"}),
        ):
            assert r.status_code == 404, r.text
            assert home not in r.text and "$HEREDITY_HOME" in r.text, r.text
            assert int(r.headers["content-length"]) == len(r.content)


def test_local_import_refuses_symlinks(store, tmp_path):
    from heredity.models import materialize

    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    for link in ("tokenizer.json", "sub/dir"):
        src = tmp_path / f"model-{link.replace('/', '-')}"
        (src / "sub").mkdir(parents=True)
        (src / "config.json").write_text("{}")
        (src / link).symlink_to(secret if link.endswith(".json") else tmp_path)
        with pytest.raises(HeredityError, match="symbolic link") as e:
            materialize(str(src), store)
        assert "\n" not in str(e.value) and "cp -rL" in str(e.value) and link in str(e.value)
    assert not store.list("model"), "nothing was imported"


# ---- two turns at once on one conversation -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_store(request, tmp_path) -> Store:
    home = tmp_path / "home"
    if request.param == "sqlite":
        return Store(home, db_url=f"sqlite:///{home / 'heredity.db'}")
    import sqlalchemy

    url = request.getfixturevalue("postgres_url")
    db = f"web{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    with sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {db}")
    return Store(home, db_url=url.rsplit("/", 1)[0] + "/" + db)


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_two_turns_at_once_store_one_and_refuse_the_other(backend_store, processes, monkeypatch):
    """Both turns read the conversation before either writes (the check is slowed down to make sure): one is
    stored, the other raises ConflictError; with the in-process lock out of the way (two processes), the
    database still refuses the second (a row lock on PostgreSQL, the unique position on SQLite)."""
    import heredity.store.conversations as conv_mod
    from heredity.store.conversations import ConflictError, Conversations

    real = conv_mod.continues

    def slow(stored, messages):
        time.sleep(0.3)
        return real(stored, messages)

    monkeypatch.setattr(conv_mod, "continues", slow)
    if processes == 2:
        monkeypatch.setattr(conv_mod, "_turn_lock", lambda cid: threading.Lock())
    cid = Conversations(backend_store).create("m-0000000000000000").id
    out: dict = {}
    barrier = threading.Barrier(2)

    def turn(k: int):
        convs = Conversations(backend_store)  # as another request (or process) would hold
        barrier.wait()
        try:
            out[k] = convs.append(cid, HELLO, {"role": "assistant", "content": f"answer {k}"})
        except Exception as e:  # noqa: BLE001 - the test reports what was raised
            out[k] = e

    threads = [threading.Thread(target=turn, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [k for k, v in out.items() if v == 1]
    lost = [k for k, v in out.items() if isinstance(v, ConflictError)]
    assert len(won) == 1 and len(lost) == 1, out
    assert "another turn" in str(out[lost[0]]) and "\n" not in str(out[lost[0]])
    stored = Conversations(backend_store).get(cid).messages
    assert [(m.role, m.content) for m in stored] == [
        ("user", "hello there"),
        ("assistant", f"answer {won[0]}"),
    ]


def _rival(store: Store, cid: str, when: str, monkeypatch) -> None:
    """Make another writer store a turn on ``cid`` first: just before the server's write (``before``), or
    between the server's read and its write (``inside``: what two processes on one SQLite store can do)."""
    import heredity.store.conversations as conv_mod
    from heredity.store.conversations import Conversations

    rival = {"role": "assistant", "content": "the rival's answer"}
    if when == "before":
        real_append = Conversations.append

        def append(self, c, history, answer):
            real_append(Conversations(store), c, history, rival)
            monkeypatch.setattr(Conversations, "append", real_append)
            return real_append(self, c, history, answer)

        monkeypatch.setattr(Conversations, "append", append)
        return
    from datetime import datetime

    from sqlalchemy.orm import Session

    from heredity.store.db import MessageRow

    real = conv_mod.continues

    def continues(stored, messages):
        monkeypatch.setattr(conv_mod, "continues", real)
        with Session(store.engine) as s:
            for i, m in enumerate([*HELLO, rival]):
                s.add(
                    MessageRow(
                        conversation_id=cid,
                        idx=i,
                        role=m["role"],
                        content=m["content"],
                        params={},
                        created_at=datetime.now(),
                    )
                )
            s.commit()
        return real(stored, messages)

    monkeypatch.setattr(conv_mod, "continues", continues)


@pytest.mark.parametrize("when", ["before", "inside"])
def test_a_turn_that_loses_the_race_is_a_409_and_its_stream_ends(backend_store, when, monkeypatch):
    """The turn stored second is a 409 (conversation_conflict); streamed, its stream ends with that error
    event (never cut off, never [DONE]); the conversation keeps the first turn only."""
    if when == "inside" and backend_store.db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's row lock keeps another writer out between the read and the write")
    from heredity.store.conversations import Conversations

    aid = peaked_model(backend_store)
    with TestClient(_app(backend_store), raise_server_exceptions=False) as c:
        for stream in (False, True):
            cid = c.post("/api/conversations", json={"model": aid}).json()["id"]
            _rival(backend_store, cid, when, monkeypatch)
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": aid,
                    "messages": HELLO,
                    "max_tokens": 3,
                    "stream": stream,
                    "conversation_id": cid,
                },
            )
            if not stream:
                assert r.status_code == 409, r.text
                assert r.json()["error"]["code"] == "conversation_conflict"
            else:
                assert r.status_code == 200
                events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
                assert events and events[-1] != "[DONE]", events[-3:]
                assert json.loads(events[-1])["error"]["code"] == "conversation_conflict", events[-1]
            stored = Conversations(backend_store).get(cid).messages
            assert [m.content for m in stored] == ["hello there", "the rival's answer"], (stream, stored)
