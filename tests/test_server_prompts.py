"""Prompt templates through the lab server: the /api/prompts routes over a real Uvicorn on loopback
(create → list → render → diff → alias moves recorded with who moved them), bad templates, unknown fields,
sandbox escapes and runaway loops answered 400 in one line with nothing stored and the server still answering,
alias moves guarded like every state-changing route, and the /prompts page and the chat page's template picker
in a real headless Chromium."""

import threading
import time

import httpx
import pytest
from conftest import LiveServer
from fastapi.testclient import TestClient
from test_server_browser import SHOTS, _text_of, _wait, browser  # noqa: F401 (browser: a fixture)

from heredity.prompts import PromptTemplate, alias_history, create_prompt
from heredity.server.app import Settings, create_app
from heredity.store import Store

KEY = "k" * 8 + "-0123456789abcdef"
GREET = {
    "name": "greet",
    "text": "Write a {{ tone }} greeting for {{ name }}.",
    "variables": {"name": {"description": "who"}, "tone": {"required": False, "default": "warm"}},
    "description": "a greeting",
}
HEAVY = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`heredity serve` (no API key) on a store of its own; template work stopped after 1 s."""
    srv = LiveServer(tmp_path_factory.mktemp("prompts-serve"), env={"HEREDITY_PROMPT_SECONDS": "1"})
    yield srv
    srv.stop()


def one_line_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "\n" not in err["message"], err
    return err["message"]


def test_create_list_render_diff_and_move_aliases(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/api/prompts", json={**GREET, "name": "rt"})
        assert r.status_code == 201, r.text
        v1 = r.json()
        assert v1["id"].startswith("p-") and v1["version"] == 1 and v1["new"] and v1["unused_variables"] == []
        again = c.post("/api/prompts", json={**GREET, "name": "rt"}).json()
        assert (
            again["id"] == v1["id"] and not again["new"] and again["versions"] == 1
        )  # same content, same id
        v2 = c.post(
            "/api/prompts", json={**GREET, "name": "rt", "text": "Write a {{ tone }} note to {{ name }}."}
        )
        v2 = v2.json()
        assert v2["version"] == 2 and v2["id"] != v1["id"]

        row = next(p for p in c.get("/api/prompts").json()["data"] if p["name"] == "rt")
        assert row["versions"] == 2 and row["latest"] == v2["id"] and row["format"] == "text"
        assert row["variables"] == ["name", "tone"] and row["description"] == "a greeting"

        def render(ref, **variables):
            return c.post("/api/prompts/render", json={"ref": ref, "variables": variables})

        assert render("rt:1", name="Ada").json() == {
            "id": v1["id"],
            "name": "rt",
            "format": "text",
            "text": "Write a warm greeting for Ada.",
        }
        assert render("rt", name="Ada", tone="dry").json()["text"] == "Write a dry note to Ada."
        msg = one_line_error(render("rt"), 400, "render_failed")
        assert "needs variable 'name'" in msg
        one_line_error(render("rt", name="Ada", colour="red"), 400, "render_failed")
        one_line_error(render("nope:3"), 404, "prompt_not_found")

        chat = {"name": "rt-chat", "messages": [{"role": "system", "content": "Be {{ mood }}."}]}
        chat["variables"] = {"mood": {"type": "str"}}
        assert c.post("/api/prompts", json=chat).status_code == 201
        assert render("rt-chat", mood="brief").json()["messages"] == [
            {"role": "system", "content": "Be brief."}
        ]

        d = c.get("/api/prompts/diff", params={"a": "rt:1", "b": "rt:2"}).json()
        assert d["a"] == v1["id"] and d["b"] == v2["id"]
        assert (
            f"--- rt:1 ({v1['id']})" in d["diff"]
            and "-  Write a {{ tone }} greeting for {{ name }}." in d["diff"]
        )
        assert "+  Write a {{ tone }} note to {{ name }}." in d["diff"]
        assert c.get("/api/prompts/diff", params={"a": "rt:2", "b": v2["id"]}).json()["diff"] == ""
        one_line_error(c.get("/api/prompts/diff", params={"a": "rt:1"}), 422, "invalid_request_error")
        # a template may be named diff: without a and b, /api/prompts/diff is its page
        one_line_error(c.get("/api/prompts/diff"), 404, "prompt_not_found")
        assert c.post("/api/prompts", json={"name": "diff", "text": "x"}).status_code == 201
        assert c.get("/api/prompts/diff").json()["versions"][0]["version"] == 1

        moved = c.post("/api/prompts/rt/aliases/production", json={"ref": 1}).json()
        assert (
            moved["moved"]
            and moved["from"] is None
            and moved["to"] == v1["id"]
            and moved["moved_by"] == "lab"
        )
        moved = c.post("/api/prompts/rt/aliases/production", json={"ref": "rt:2"}).json()
        assert (moved["from_version"], moved["to_version"], moved["moved"]) == (1, 2, True)
        assert not c.post("/api/prompts/rt/aliases/production", json={"ref": v2["id"]}).json()["moved"]
        msg = one_line_error(c.post("/api/prompts/rt/aliases/latest", json={"ref": 1}), 400, "invalid_alias")
        assert "reserved" in msg
        one_line_error(
            c.post("/api/prompts/rt/aliases/production", json={"ref": "rt-chat"}), 400, "invalid_alias"
        )

        detail = c.get("/api/prompts/rt").json()
        assert [v["version"] for v in detail["versions"]] == [1, 2]
        assert detail["versions"][1]["aliases"] == ["production"]
        assert detail["aliases"] == {"production": {"id": v2["id"], "version": 2}}
        assert [(h["from_version"], h["to_version"], h["moved_by"]) for h in detail["history"]] == [
            (None, 1, "lab"),
            (1, 2, "lab"),
        ]
        shown = c.get("/api/prompts/rt@production/template").json()
        assert (
            shown["id"] == v2["id"] and shown["template"]["text"] == "Write a {{ tone }} note to {{ name }}."
        )
        assert render("rt@production", name="Bo").json()["text"] == "Write a warm note to Bo."
    # what the server wrote is what the library reads
    history = alias_history(Store(server.home), "rt", "production")
    assert [(h["to"], h["moved_by"]) for h in history] == [(v1["id"], "lab"), (v2["id"], "lab")]


def test_a_bad_template_is_one_line_and_nothing_is_stored(server):
    bad = [
        ({"text": "Hi {% for %}"}, "syntax error at line 1"),
        ({"text": "Hi {{ who }}"}, "does not declare it"),
        ({"text": "{{ n }}", "variables": {"n": {"type": "int", "default": "many"}}}, "variable 'n' is int"),
        ({"text": "{{ ''.__class__.__mro__ }}"}, "Python internals"),
        ({"text": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one of them"),
        ({"text": "   "}, "empty"),
        ({"text": "{{ x }}", "variables": {"range": {}}}, "cannot name a variable"),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i, (fields, want) in enumerate(bad):
            msg = one_line_error(
                c.post("/api/prompts", json={"name": f"bad{i}", **fields}), 400, "invalid_prompt"
            )
            assert want in msg, (fields, msg)
            one_line_error(c.get(f"/api/prompts/bad{i}"), 404, "prompt_not_found")
        big = '{"name": "bad-big", "text": "{{ x }}", "variables": {"x": {"type": "float", "default": 1%s}}}'
        r = c.post("/api/prompts", content=big % ("0" * 400), headers={"Content-Type": "application/json"})
        assert "variable 'x' is float" in one_line_error(r, 400, "invalid_prompt")  # a float overflow
        msg = one_line_error(
            c.post("/api/prompts", json={"name": "p-0123abcd", "text": "x"}), 400, "invalid_prompt"
        )
        assert "reads as an artifact id" in msg
        names = {p["name"] for p in c.get("/api/prompts").json()["data"]}
    assert not any(n.startswith(("bad", "p-")) for n in names), names
    assert not [a for a in Store(server.home).list("prompt") if a.name.startswith("bad")]


def test_an_unknown_field_is_refused_not_ignored(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for path, body, field in (
            ("/api/prompts", {**GREET, "name": "uf", "temperature": 1}, "temperature"),
            (
                "/api/prompts",
                {**GREET, "name": "uf", "variables": {"name": {"typ": "str"}}},
                "variables.name.typ",
            ),
            (
                "/api/prompts",
                {"name": "uf", "messages": [{"role": "user", "content": "x", "name": "a"}]},
                "name",
            ),
            ("/api/prompts/render", {"ref": "uf", "vars": {}}, "vars"),
            ("/api/prompts/uf/aliases/production", {"ref": 1, "by": "someone else"}, "by"),
        ):
            r = c.post(path, json=body)
            msg = one_line_error(r, 400, "unsupported_parameter")
            assert r.json()["error"]["param"].endswith(field) and "not implemented" in msg, (path, msg)
        assert "uf" not in {p["name"] for p in c.get("/api/prompts").json()["data"]}


def test_a_sandbox_escape_through_render_is_a_one_line_400(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i, text in enumerate(
            (
                "{{ name | attr('__class__') }}",
                "{{ name.upper }}",
                "{{ (name | attr('__init__')).__globals__ }}",
                "{{ name.format.__self__ }}",
            )
        ):
            r = c.post("/api/prompts", json={"name": f"esc{i}", "text": text, "variables": {"name": {}}})
            if r.status_code == 400:  # refused when created: reads a name starting with '_'
                assert "Python internals" in one_line_error(r, 400, "invalid_prompt")
                continue
            assert r.status_code == 201, r.text
            r = c.post("/api/prompts/render", json={"ref": f"esc{i}", "variables": {"name": "x"}})
            msg = one_line_error(r, 400, "render_failed")
            assert "sandbox" in msg or "function" in msg, msg
        # a value is data, never template code
        assert c.post("/api/prompts", json={**GREET, "name": "esc-value"}).status_code == 201
        r = c.post("/api/prompts/render", json={"ref": "esc-value", "variables": {"name": "{{ 7 * 7 }}"}})
        assert r.json()["text"] == "Write a warm greeting for {{ 7 * 7 }}."


def test_a_runaway_loop_is_stopped_and_never_freezes_the_server(server):
    """A template looping 10^10 times: its render is stopped after the time limit (1 s here) and answered 400,
    while /api/status answers at once; its thread really ends (the next renders get a worker, not 429)."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.post("/api/prompts", json={"name": "heavy", "text": HEAVY}).status_code == 201
        assert c.post("/api/prompts", json={**GREET, "name": "light"}).status_code == 201
        answers: list[httpx.Response] = []

        def heavy():
            with httpx.Client(base_url=server.url, timeout=30) as h:
                answers.append(h.post("/api/prompts/render", json={"ref": "heavy"}))

        t0 = time.monotonic()
        worker = threading.Thread(target=heavy)
        worker.start()
        time.sleep(0.2)  # the render has started
        waits = []
        while worker.is_alive() and time.monotonic() - t0 < 20:
            s = time.monotonic()
            assert c.get("/api/status").status_code == 200
            waits.append(time.monotonic() - s)
            time.sleep(0.05)
        worker.join()
        took = time.monotonic() - t0
        assert len(waits) >= 5 and max(waits) < 0.5, waits  # the server kept answering during the render
        assert "took over 1 s and was stopped" in one_line_error(answers[0], 400, "prompt_timeout")
        assert 1 <= took < 10, took
        # both workers at once on runaway loops: both stopped; then the workers are free again
        time.sleep(0.5)  # the stopped thread has ended
        pair = [threading.Thread(target=heavy) for _ in range(2)]
        for t in pair:
            t.start()
        for t in pair:
            t.join()
        assert [a.json()["error"]["code"] for a in answers[1:]] == ["prompt_timeout"] * 2
        deadline, r = time.monotonic() + 5, None
        while time.monotonic() < deadline:
            r = c.post("/api/prompts/render", json={"ref": "light", "variables": {"name": "Ada"}})
            if r.status_code != 429:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and r.json()["text"] == "Write a warm greeting for Ada.", r.text


# ---- guarded like every state-changing route (in process, as tests/test_server_web_security.py) -----------


def test_an_alias_move_needs_the_key_and_a_same_origin_request(tmp_path):
    home = tmp_path / "home"
    store = Store(home, db_url=f"sqlite:///{home / 'heredity.db'}")
    template = PromptTemplate(**GREET)
    v1 = create_prompt(store, template)
    v2 = create_prompt(store, PromptTemplate(**{**GREET, "text": "Hi {{ name }}, {{ tone }}."}))
    app = create_app(store, Settings(allowed_hosts=["testserver"], api_key=KEY))
    path = "/api/prompts/greet/aliases/production"
    bearer = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app, base_url="http://127.0.0.1:8000", follow_redirects=False) as c:
        assert c.post(path, json={"ref": 1}).status_code == 401
        assert (
            c.post(path, json={"ref": 1}, headers={"Authorization": "Bearer wrong-key-0000000"}).status_code
            == 401
        )
        for extra in (
            {"Origin": "http://evil.example"},
            {"Origin": "http://127.0.0.1:3000"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ):
            r = c.post(path, json={"ref": 1}, headers={**bearer, **extra})
            one_line_error(r, 403, "cross_site_request")
            for other in ("/api/prompts", "/api/prompts/render"):  # the other POSTs too
                assert c.post(other, json={"ref": "greet"}, headers={**bearer, **extra}).status_code == 403
        r = c.post(path, content='{"ref": 1}', headers={**bearer, "Content-Type": "text/plain"})
        assert r.status_code == 415
        assert alias_history(store, "greet") == []  # nothing was moved
        r = c.post(path, json={"ref": 1}, headers=bearer)
        assert r.status_code == 200 and r.json()["moved_by"] == "api-key"
        # a browser session: same origin passes and is recorded as that session, another origin does not
        login = c.post("/login", data={"key": KEY}, headers={"Origin": "http://127.0.0.1:8000"})
        token = login.cookies["heredity_key"]
        c.cookies.clear()
        cookie = {"Cookie": f"heredity_key={token}"}
        r = c.post(path, json={"ref": 2}, headers={**cookie, "Origin": "http://evil.example"})
        one_line_error(r, 403, "cross_site_request")
        r = c.post(path, json={"ref": 2}, headers={**cookie, "Origin": "http://127.0.0.1:8000"})
        assert r.status_code == 200, r.text
        by = r.json()["moved_by"]
        assert by.startswith("session-") and len(by) == len("session-") + 8 and token not in by
    assert [(h["to"], h["moved_by"]) for h in alias_history(store, "greet")] == [(v1, "api-key"), (v2, by)]


# ---- the pages in headless Chromium ---------------------------------------------------------------------


def test_prompts_page_render_diff_alias_and_chat_system_prompt(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    with httpx.Client(base_url=server.url, timeout=30) as c:
        v1 = c.post("/api/prompts", json={**GREET, "name": "page"}).json()["id"]
        body = {**GREET, "name": "page", "text": "Write a {{ tone }} note to {{ name }}."}
        v2 = c.post("/api/prompts", json=body).json()["id"]

    d.get(server.url + "/prompts")
    item = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#prompt-list li[data-name="page"]'))[0]
    assert "2 versions" in item.text
    item.click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 2)
    _wait(d, lambda d: (_text_of(d, "#template-text") or "").startswith("Write a {{ tone }} note"))
    assert "/prompts?name=page" in d.current_url
    # render the latest version with one variable given (the other from its default)
    d.find_element(By.CSS_SELECTOR, '#render-vars input[data-var="name"]').send_keys("Ada")
    d.find_element(By.ID, "render").click()
    _wait(d, lambda d: _text_of(d, "#render-text") == "Write a warm note to Ada.")
    # a missing variable: the server's one-line error is shown
    d.find_element(By.CSS_SELECTOR, '#render-vars input[data-var="name"]').clear()
    d.find_element(By.ID, "render").click()
    _wait(d, lambda d: "needs variable 'name'" in (_text_of(d, "#render-error") or ""))
    # diff v1 → v2 (the form's defaults)
    d.find_element(By.ID, "diff").click()
    _wait(d, lambda d: "+  Write a {{ tone }} note to {{ name }}." in (_text_of(d, "#diff-out") or ""))
    assert d.find_elements(By.CSS_SELECTOR, "#diff-out span.add") and d.find_elements(
        By.CSS_SELECTOR, "#diff-out span.del"
    )
    # move an alias twice; the history shows each move
    d.find_element(By.ID, "alias-name").send_keys("production")
    Select(d.find_element(By.ID, "alias-version")).select_by_value(v1)
    d.find_element(By.ID, "move-alias").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#alias-history tbody tr td:nth-child(5)")) == 1)
    assert "(new) → v1" in _wait(d, lambda d: _text_of(d, "#alias-result"))
    Select(d.find_element(By.ID, "alias-version")).select_by_value(v2)
    d.find_element(By.ID, "move-alias").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#alias-history tbody tr td:nth-child(5)")) == 2)
    newest = d.find_element(By.CSS_SELECTOR, "#alias-history tbody tr").text  # newest first
    assert "@production" in newest and f"v1 ({v1})" in newest and f"v2 ({v2})" in newest and "lab" in newest
    assert "@production" in d.find_element(By.CSS_SELECTOR, f'#versions tr[data-id="{v2}"] td.aliases').text
    history = httpx.get(f"{server.url}/api/prompts/page").json()["history"]
    assert [(h["to"], h["moved_by"]) for h in history] == [(v1, "lab"), (v2, "lab")]
    d.save_screenshot(str(SHOTS / "prompts.png"))

    # the chat page: the system prompt rendered from the template its alias points to
    d.find_element(By.LINK_TEXT, "Chat").click()
    _wait(
        d,
        lambda d: any(
            o.get_attribute("value") == "page@production"
            for o in d.find_elements(By.CSS_SELECTOR, "#system-template option")
        ),
    )
    assert not [
        o
        for o in d.find_elements(By.CSS_SELECTOR, "#system-template option")
        if o.get_attribute("value") == "rt-chat"
    ]  # a messages template is not a system prompt
    Select(d.find_element(By.ID, "system-template")).select_by_value("page@production")
    box = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#template-vars input[data-var="name"]'))[0]
    box.send_keys("Bo")
    d.find_element(By.ID, "use-template").click()
    _wait(d, lambda d: d.find_element(By.ID, "system").get_attribute("value") == "Write a warm note to Bo.")
    d.find_element(By.ID, "system").send_keys(" Keep it short.")  # still free text to edit
    assert d.find_element(By.ID, "system").get_attribute("value") == "Write a warm note to Bo. Keep it short."
    d.save_screenshot(str(SHOTS / "chat-template.png"))
