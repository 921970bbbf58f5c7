"""The heredity loop through the lab server: a round runs on a thread of its own and reports through its job
(a refusal comes back as its one-line message, and the alias stays), one round at a time while the other
routes answer, the alias moved by hand and rolled back, the arena's anonymous answers and a vote stored as
opposite feedback the loop reads, the loop's routes guarded like every state-changing route; and in a real
headless Chromium, the planted preference (the user always prefers answers about owls) rated in the chat,
trained from the /loop page, served under the alias, and traced back on the lineage page."""

import json
import threading
import time

import httpx
import pytest
from conftest import LiveServer, stored_tiny
from fastapi.testclient import TestClient
from test_server_browser import SHOTS, _text_of, _wait, browser  # noqa: F401 (browser: a fixture)

from heredity import loop
from heredity.server.app import Settings, create_app
from heredity.store import Store
from heredity.store.conversations import Conversations

KEY = "k" * 8 + "-0123456789abcdef"
SMALL = {  # a round small enough for a test (as tests/test_loop.py), ~1 s of training on the tiny model
    # enough steps for the greedy answers to start with "Owls" (the check decides promotion); at 10 they are
    # still spaces, though held-out likelihoods already move the way the user rated
    "steps": 60,
    "lr": 1e-2,
    "batch_size": 4,
    "min_feedback": 4,
    "min_eval": 2,
    "holdout": 0.3,
    "max_new_tokens": 8,
    "max_length": 96,
}


@pytest.fixture
def home(tmp_path) -> Store:
    home = tmp_path / "home"
    return Store(home, db_url=f"sqlite:///{home / 'heredity.db'}")


def _app(store: Store, **settings):
    return create_app(store, Settings(allowed_hosts=["testserver"], **settings))


def wait_job(c, jid: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while True:
        r = c.get(f"/api/loop/jobs/{jid}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["state"] != "running":
            return job
        assert time.time() < deadline, job
        time.sleep(0.05)


def error_code(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"] and "\n" not in err["message"], err
    return err["code"]


def test_too_little_feedback_fails_the_job_with_the_refusal_and_the_alias_stays(home):
    tiny = stored_tiny(home, "chat")
    convs = Conversations(home)
    for i in range(2):
        conv = convs.create(tiny)
        q = [{"role": "user", "content": f"Tell me about topic {i}."}]
        idx = convs.append(conv.id, q, {"role": "assistant", "content": "I do not know.", "model": tiny})
        convs.feedback(conv.id, idx, rating=-1, better=f"Owls know topic {i}.")
    with TestClient(_app(home)) as c:
        assert c.get("/api/loop").json() == {"aliases": {}, "history": {}, "rounds": [], "job": None}
        r = c.post("/api/loop/rounds", json={"base": tiny, **SMALL, "min_feedback": 8})
        assert r.status_code == 202, r.text
        assert r.json()["base"] == tiny and r.json()["alias"] == "lab-latest"
        job = wait_job(c, r.json()["job"])
        assert job["state"] == "failed" and "record" not in job, job
        assert job["error"].startswith("round refused: too little feedback") and "\n" not in job["error"]
        assert "SFT rows" in job["error"] and "lower min_feedback" in job["error"]
        assert home.model_alias("lab-latest") is None  # nothing moved
        state = c.get("/api/loop").json()
        assert state["aliases"] == {} and state["rounds"] == [] and state["job"]["id"] == job["id"]
        # bad settings never start a job: unknown fields, bad values, a base with no weights to train
        for bad in (
            {"alias": "Lab Latest"},
            {"alias": "m-0123"},
            {"holdout": 1.5},
            {"method": "ppo"},
            {"checks": [{"name": "owls", "pattern": "(owl"}]},
        ):
            r = c.post("/api/loop/rounds", json={"base": tiny, **bad})
            assert error_code(r, 422) == "invalid_request_error", bad
        for unknown in ({"stepz": 3}, {"checks": [{"name": "owls", "pattern": "owl", "weight": 2}]}):
            r = c.post("/api/loop/rounds", json={"base": tiny, **unknown})  # the server's answer to any route
            assert error_code(r, 400) == "unsupported_parameter", unknown
        for base in ("openai:gpt@http://127.0.0.1:9/v1", "/tmp", "HuggingFaceTB/SmolLM2-135M"):
            r = c.post(
                "/api/loop/rounds", json={"base": base}
            )  # as every route: no paths or hub ids over HTTP
            assert error_code(r, 404) == "model_not_found" and "not loaded over HTTP" in r.text, base
        assert c.get("/api/loop").json()["job"]["id"] == job["id"]
        assert error_code(c.get("/api/loop/jobs/j-0000000000000000"), 404) == "job_not_found"


def test_one_round_at_a_time_while_the_server_answers(home, monkeypatch):
    """A round is minutes of CPU: it runs on a thread of its own, a second start meanwhile is 409, and the
    other routes answer; its record comes back through the job (without the long list it trained on)."""
    tiny = stored_tiny(home, "chat")
    started, release, seen = threading.Event(), threading.Event(), []

    def fake_round(store, config, progress=True, on_progress=None):
        seen.append(config)
        on_progress(f"{config.method}: asked for it")
        started.set()
        assert release.wait(60)
        return {
            "id": "r-0123456789abcdef",
            "alias": config.alias,
            "round": len(seen),
            "trained_on": [["c-0123456789abcdef", 1]],
            "stats": {"agreement": {"mean": float("nan"), "n": 0}},
            "decision": {"promote": False},
        }

    monkeypatch.setattr(loop, "run_round", fake_round)
    with TestClient(_app(home)) as c:
        r = c.post("/api/loop/rounds", json={"base": tiny, "method": "sft"})
        assert r.status_code == 202, r.text
        jid = r.json()["job"]
        assert started.wait(30)
        r = c.post("/api/loop/rounds", json={"base": tiny})
        assert error_code(r, 409) == "round_running" and jid in r.json()["error"]["message"]
        job = c.get(f"/api/loop/jobs/{jid}").json()
        assert job["state"] == "running" and job["log"] == ["sft: asked for it"]
        assert c.get("/api/status").status_code == 200 and c.get("/api/conversations").status_code == 200
        assert c.get("/api/loop").json()["job"]["state"] == "running"
        release.set()
        job = wait_job(c, jid)
        assert job["state"] == "done", job
        assert "trained_on" not in job["record"] and job["record"]["stats"]["agreement"]["mean"] is None
        # the next round may start; without a base, it starts where the alias started
        loop.move_alias(home, "lab-latest", tiny, "the loop's start")
        r = c.post("/api/loop/rounds", json={"method": "kto", "steps": 3})
        assert r.status_code == 202 and r.json()["base"] == tiny, r.text
        assert wait_job(c, r.json()["job"])["state"] == "done"
    assert [(x.method, x.base, x.steps) for x in seen] == [("sft", tiny, 30), ("kto", tiny, 3)]
    assert all(isinstance(x, loop.LoopConfig) for x in seen)


def test_promote_by_hand_and_roll_back(home):
    a, b = stored_tiny(home, "chat"), stored_tiny(home, "other", initializer_range=0.5)
    base = "/api/loop/aliases/lab-latest"
    with TestClient(_app(home)) as c:
        assert error_code(c.post(f"{base}/rollback", json={}), 404) == "alias_not_found"
        m = c.post(f"{base}/promote", json={"model": a}).json()
        assert (m["from"], m["to"], m["reason"], m["moved"]) == (None, a, "set by hand", True)
        r = c.post(f"{base}/rollback", json={})
        assert error_code(r, 409) == "nothing_to_roll_back" and "no earlier model to roll back to" in r.text
        assert c.post(f"{base}/promote", json={"model": b}).json()["from"] == a
        assert c.post(f"{base}/rollback", json={}).json()["to"] == a
        r = c.post(f"{base}/promote", json={"model": "m-ffffffffffffffff"})
        assert error_code(r, 404) == "model_not_found"
        r = c.post(f"{base}/promote", json={"model": "smollm2-135m-instruct", "reason": "x"})
        assert error_code(r, 400) == "unsupported_parameter"
        assert (
            error_code(c.post(f"{base}/promote", json={"model": a, "why": "x"}), 400)
            == "unsupported_parameter"
        )
        assert error_code(c.post(f"{base}/rollback"), 422)  # a JSON body, {}, like every other POST
        r = c.post("/api/loop/aliases/m-0123/promote", json={"model": a})
        assert error_code(r, 400) == "invalid_alias" and "artifact id" in r.text
        state = c.get("/api/loop").json()
    assert state["aliases"] == {"lab-latest": a} and home.model_alias("lab-latest") == a
    moves = state["history"]["lab-latest"]
    assert [(x["from"], x["to"], x["reason"], x["moved_by"]) for x in moves] == [
        (None, a, "set by hand", "lab"),
        (a, b, "set by hand", "lab"),
        (b, a, f"rollback from {b}", "lab"),
    ]


def test_arena_answers_anonymously_and_a_vote_is_stored_as_opposite_feedback(home):
    a, b = stored_tiny(home, "chat"), stored_tiny(home, "other", initializer_range=0.5)
    with TestClient(_app(home)) as c:
        # nothing to compare yet: the alias serves nothing and no models are named
        assert error_code(c.post("/api/arena", json={"prompt": "Which bird?"}), 400) == "no_models"
        r = c.post("/api/arena", json={"prompt": "Which bird?", "models": [a, a]})
        assert error_code(r, 400) == "same_model"
        assert error_code(c.post("/api/arena", json={"prompt": "Which bird?", "models": [a]}), 422)
        r = c.post("/api/arena", json={"prompt": "Which bird?", "models": [a, b], "max_tokens": 8})
        assert r.status_code == 200, r.text
        battle = r.json()
        assert set(battle) == {"id", "answers"} and [x["slot"] for x in battle["answers"]] == ["A", "B"]
        assert a not in r.text and b not in r.text  # which model wrote which is not said
        shown = {x["slot"]: x["text"] for x in battle["answers"]}
        v = c.post(f"/api/arena/{battle['id']}/vote", json={"winner": "B"})
        assert v.status_code == 200, v.text
        v = v.json()
        assert {v["answers"]["A"]["model"], v["answers"]["B"]["model"]} == {a, b}
        r = c.post(f"/api/arena/{battle['id']}/vote", json={"winner": "A"})
        assert error_code(r, 409) == "already_voted"
        assert error_code(c.post("/api/arena/b-0000000000000000/vote", json={"winner": "A"}), 404)
        assert error_code(c.post(f"/api/arena/{battle['id']}/vote", json={"winner": "C"}), 422)
        # one conversation per answer, one prompt: the winner's answer +1, the loser's −1
        for slot, rating in (("B", 1), ("A", -1)):
            s = v["answers"][slot]
            assert s["rating"] == rating
            conv = c.get(f"/api/conversations/{s['conversation_id']}").json()
            assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
            assert conv["messages"][0]["content"] == "Which bird?" and conv["model"] == s["model"]
            msg = conv["messages"][1]
            assert (msg["rating"], msg["model"], msg["content"]) == (rating, s["model"], shown[slot])

        # the loop reads the vote once the alias serves these models: a preference pair on one prompt
        loop.move_alias(home, "lab-latest", a, "the loop's start")
        loop.move_alias(home, "lab-latest", b, "set by hand")
        items = loop.feedback_items(home, loop.LoopConfig(base=a))
        assert sorted((it["answer"], it["rating"]) for it in items) == sorted(
            [(shown["B"], 1), (shown["A"], -1)]
        )
        if shown["A"] != shown["B"]:
            assert loop.training_rows(items)["dpo"] == [
                {
                    "prompt": [{"role": "user", "content": "Which bird?"}],
                    "chosen": shown["B"],
                    "rejected": shown["A"],
                }
            ]
        # without models: the alias now and where it pointed before
        r = c.post("/api/arena", json={"prompt": "Owls?", "max_tokens": 4})
        assert r.status_code == 200, r.text
        v = c.post(f"/api/arena/{r.json()['id']}/vote", json={"winner": "A"}).json()
        assert {v["answers"]["A"]["model"], v["answers"]["B"]["model"]} == {a, b}


def test_loop_changes_are_refused_from_other_sites_and_without_the_key(home):
    posts = (
        ("/api/loop/rounds", {"base": "m-0000000000000000"}),
        ("/api/loop/aliases/lab-latest/rollback", {}),
        ("/api/loop/aliases/lab-latest/promote", {"model": "m-0000000000000000"}),
        ("/api/arena", {"prompt": "hi", "models": ["m-0000000000000000", "m-0000000000000001"]}),
        ("/api/arena/b-0000000000000000/vote", {"winner": "A"}),
    )
    with TestClient(_app(home)) as c:
        for extra in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            for path, body in posts:
                assert error_code(c.post(path, json=body, headers=extra), 403) == "cross_site_request", path
        for path, body in posts:
            r = c.post(path, content=json.dumps(body), headers={"Content-Type": "text/plain"})
            assert r.status_code == 415, path
        assert c.get("/api/loop").json()["job"] is None  # no round was started
        r = c.post(
            "/api/loop/rounds", json={"base": "m-0000000000000000"}, headers={"Origin": "http://testserver"}
        )
        assert error_code(r, 404) == "model_not_found"  # the server's own page reaches the route
    with TestClient(_app(home, api_key=KEY)) as c:
        for path, body in posts:
            assert error_code(c.post(path, json=body), 401) == "invalid_api_key", path
        assert c.get("/api/loop").status_code == 401


# ---- the page in headless Chromium: the planted preference, trained from the page --------------------------


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    """`heredity serve` on a store of its own with a tiny chat model: (server, model id)."""
    home = tmp_path_factory.mktemp("loop-serve")
    tiny = stored_tiny(Store(home), "chat")
    srv = LiveServer(home)
    yield srv, tiny
    srv.stop()


def test_train_from_planted_feedback_on_the_loop_page(browser, loop_server):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    srv, tiny = loop_server
    d = browser
    # the user always prefers answers about owls: every answer is rated down and replaced by one about owls
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        for i in range(30):  # a share 0.3 held out: fewer than 2 held-out conversations is 1 in 3000 runs
            cid = c.post("/api/conversations", json={"model": tiny}).json()["id"]
            q = [{"role": "user", "content": f"Tell me about topic {i}."}]
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": tiny,
                    "messages": q,
                    "conversation_id": cid,
                    "max_tokens": 8,
                    "temperature": 0,
                },
            )
            idx = r.json()["heredity"]["message_idx"]
            better = {"rating": -1, "better": f"Owls know topic {i}. Owls!"}
            assert c.put(f"/api/conversations/{cid}/messages/{idx}/feedback", json=better).status_code == 200

    d.get(srv.url + "/loop")
    _wait(
        d,
        lambda d: any(
            o.get_attribute("value") == tiny for o in d.find_elements(By.CSS_SELECTOR, "#base option")
        ),
    )
    assert "No round yet" in d.find_element(By.ID, "rounds-empty").text
    Select(d.find_element(By.ID, "base")).select_by_value(tiny)
    Select(d.find_element(By.ID, "method")).select_by_value("sft")
    for field, value in SMALL.items():
        box = d.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    d.find_element(By.ID, "checks").send_keys("owls=owl")
    d.find_element(By.ID, "train").click()
    state = _wait(
        d,
        lambda d: (
            d.find_element(By.ID, "job-state").get_attribute("data-state") in ("done", "failed")
            and d.find_element(By.ID, "job-state").get_attribute("data-state")
        ),
        timeout=300,
    )
    assert state == "done", _text_of(d, "#job-error")
    assert "sft: asked for sft" in _text_of(d, "#job-log")
    item = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#rounds li.round[data-round="1"]'))[0]

    loop_state = httpx.get(srv.url + "/api/loop").json()
    (rec,) = loop_state["rounds"]
    adapter = rec["new"]
    assert rec["method"] == "sft" and rec["old"] == tiny and adapter.startswith("a-")
    # held-out answers about owls became likelier and the model's own rated-down answers less likely, as the
    # user rated: a loop that trained on nothing scores 0
    agree = rec["stats"]["agreement"]
    assert agree["n"] >= 2 and agree["mean"] > 0.5, agree
    assert rec["decision"]["promote"], rec["decision"]
    text = item.text
    assert "Round 1" in text and "sft" in text and "promoted" in text and "check owls" in text, text
    assert rec["decision"]["rule"] in text and "agreement" in text
    link = item.find_element(By.CSS_SELECTOR, "a.lineage").get_attribute("href")
    assert link.endswith(f"/lineage?root={adapter}")

    # the alias serves the new adapter: the store says so, and a chat request to it is answered by it
    assert Store(srv.home).model_alias("lab-latest") == adapter == loop_state["aliases"]["lab-latest"]
    hi = [{"role": "user", "content": "Tell me about owls."}]
    r = httpx.post(
        srv.url + "/v1/chat/completions", json={"model": "lab-latest", "messages": hi, "max_tokens": 4}
    )
    assert r.status_code == 200 and r.json()["system_fingerprint"] == f"heredity-{adapter}", r.text
    assert _text_of(d, "#alias-target") == adapter
    assert len(d.find_elements(By.CSS_SELECTOR, "#alias-history tbody tr")) == 2
    d.save_screenshot(str(SHOTS / "loop.png"))
    d.execute_script("document.getElementById('rounds').scrollIntoView()")
    d.save_screenshot(str(SHOTS / "loop-rounds.png"))

    # the arena: the alias now against where it pointed before, anonymous until the vote
    d.find_element(By.ID, "arena-prompt").send_keys("Tell me about owls.")
    d.find_element(By.ID, "arena-max").clear()
    d.find_element(By.ID, "arena-max").send_keys("8")
    d.find_element(By.ID, "arena-go").click()
    _wait(
        d,
        lambda d: (
            d.find_element(By.ID, "vote-a").is_displayed() and d.find_element(By.ID, "vote-a").is_enabled()
        ),
    )
    assert tiny not in d.find_element(By.ID, "arena-answers").text
    d.find_element(By.ID, "vote-a").click()
    reveal = _wait(
        d,
        lambda d: _text_of(d, "#arena-reveal") if "stored" in (_text_of(d, "#arena-reveal") or "") else None,
    )
    assert adapter in reveal and tiny in reveal and "+1" in reveal

    # lineage: the round's conversations → its training rows → the adapter the alias serves
    d.find_element(By.CSS_SELECTOR, '#rounds li.round[data-round="1"] a.lineage').click()
    for aid in (adapter, rec["datasets"]["train"], rec["datasets"]["conversations"]):
        _wait(d, lambda d, aid=aid: d.find_elements(By.CSS_SELECTOR, f'svg a.node[data-id="{aid}"]'))
    edges = {
        (e["source"], e["target"]) for e in httpx.get(f"{srv.url}/api/lineage?root={adapter}").json()["edges"]
    }
    assert (rec["datasets"]["conversations"], rec["datasets"]["train"]) in edges
    assert (rec["datasets"]["train"], adapter) in edges and (tiny, adapter) in edges
    d.save_screenshot(str(SHOTS / "loop-lineage.png"))

    # roll back from the page: the alias serves the model before the round again
    d.get(srv.url + "/loop")
    _wait(d, lambda d: _text_of(d, "#alias-target") == adapter)
    d.find_element(By.ID, "rollback").click()
    _wait(d, lambda d: _text_of(d, "#alias-target") == tiny)
    assert f"rollback from {adapter}" in d.find_element(By.CSS_SELECTOR, "#alias-history tbody tr").text
    assert Store(srv.home).model_alias("lab-latest") == tiny
