"""heredity insights (Clio): PII scrubbing, privacy thresholds, the auditor, clustering of known topics."""

import pytest

SCRUB_CASES = [  # (text, expected counts by type, a substring that must survive or be gone)
    ("mail me at jane.doe+x@example.co.uk please", {"email": 1}, "jane.doe"),
    ("card 4111 1111 1111 1111 exp 12/27", {"card": 1}, "4111"),
    ("card 4111-1111-1111-1111", {"card": 1}, "4111"),
    ("my SSN is 123-45-6789", {"national_id": 1}, "6789"),
    ("NI number AB 12 34 56 C", {"national_id": 1}, "AB 12"),
    ("server at 192.168.1.20 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334", {"ip": 2}, "192.168"),
    ("call +1 415 555 0134 or (020) 7946 0958 or 415-555-0134", {"phone": 3}, "555"),
    ("clone https://bob:hunter2@git.example.com/repo.git", {"url_credentials": 1}, "hunter2"),
    ("Dr. Moreau said hi; my name is Ana Lopez; I met John Smith.", {"name": 3}, "Lopez"),
]
KEEP_CASES = [  # nothing to scrub: the text must come back unchanged
    "card 4111 1111 1111 1112 fails the Luhn check",
    "The year 2023 had 365 days and version 3.11.4 was out; order #12345.",
    "Python 3.12, the numbers 1 2 3 4 5 and the date 2024-01-15",
    "In New York the Statue of Liberty",
    "I'm going home; see https://example.com/docs",
    "the IP-like version 999.1.2.3 and 1.2.3",
]


@pytest.mark.parametrize(("text", "counts", "gone"), SCRUB_CASES)
def test_scrubber_replaces_pii_with_typed_placeholders(text, counts, gone):
    from heredity.insights.pii import PLACEHOLDERS, scrub

    s = scrub(text)
    assert dict(s.counts) == counts and gone not in s.text
    for kind in counts:
        assert PLACEHOLDERS[kind] in s.text


@pytest.mark.parametrize("text", KEEP_CASES)
def test_scrubber_leaves_text_without_pii_alone(text):
    from heredity.insights.pii import scrub

    s = scrub(text)
    assert s.text == text and not s.counts


def test_luhn():
    from heredity.insights.pii import luhn_ok

    assert luhn_ok("4111111111111111") and luhn_ok("79927398713") and not luhn_ok("4111111111111112")


def _conv(i, user, text, topic=None):
    row = {
        "conversation_id": f"c{i}",
        "user_id": user,
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "Sure, here is how."},
        ],
    }
    if topic:
        row["true_topic"] = topic
    return row


def _rows_with_small_cluster():
    """Demo conversations plus 30 on a distinctive topic held by only 4 users (unique words in every one)."""
    from heredity.insights.demo import demo_conversations

    rows = demo_conversations(n=240, rare=0, seed=5)
    rows += [
        _conv(
            1000 + i,
            f"secret-user-{i % 4}",
            f"Zorblax quintessence calibration of my Vexford turbine number {i}",
        )
        for i in range(30)
    ]
    return rows


def test_a_cluster_of_four_users_never_appears_in_any_output(tmp_path):
    """30 conversations on one topic from 4 users form their own cluster, which is counted in 'other' and
    never named, described, keyworded or mapped: none of its words reach the JSON or the markdown."""
    import json

    from heredity.insights.pipeline import InsightsConfig, analyse, markdown, outcome

    rows = _rows_with_small_cluster()
    fac = [{"summary": r["messages"][0]["content"], "concern": False, "language": "English"} for r in rows]
    res = analyse(rows, fac, InsightsConfig(k=9, levels=2))
    report = {"config": InsightsConfig(k=9).model_dump(), "source": "test", "pii": {}, **res}
    report["outcome"] = outcome(report)
    text = json.dumps(report) + markdown(report)
    for word in ("zorblax", "vexford", "quintessence", "turbine", "secret-user"):
        assert word not in text.lower(), word
    assert (
        len(res["levels"][0]) == 8 and res["other"]["conversations"] == 30
    )  # clustered on its own, and hidden
    assert all(c["users"] >= 5 and c["conversations"] >= 10 for c in res["levels"][0])


def test_thresholds_count_distinct_users_and_conversations():
    from heredity.insights.privacy import thresholds

    labels = [0] * 12 + [1] * 12 + [2] * 3
    users = [f"u{i % 6}" for i in range(12)] + [f"v{i % 4}" for i in range(12)] + ["w0", "w1", "w2"]
    g = thresholds(labels, users, min_users=5, min_conversations=10)
    assert g["shown"] == [0] and g["other"] == 15 and g["users"] == {0: 6, 1: 4, 2: 3}


def test_auditor_withholds_a_description_with_a_planted_name():
    from heredity.insights.privacy import audit

    texts = [
        "People ask for help writing cover letters.",
        "Requests from Maria Garcia about her divorce filing.",
        "Questions sent from jane@example.com",
        "Account 1234567 balance questions",
        "Help from Dr. Moreau's office",
    ]
    a = audit(texts)
    assert a.passed == [True, False, False, False, False]
    assert a.summary["withheld"] == 4 and a.summary["by_reason"]["pii:name"] == 2


def test_planted_name_in_a_cluster_description_is_withheld(monkeypatch):
    import numpy as np

    from heredity.insights import pipeline
    from heredity.insights.demo import demo_conversations

    rows = demo_conversations(n=160, rare=0, seed=2)
    fac = [{"summary": r["messages"][0]["content"], "concern": False} for r in rows]

    def namer(
        model, tok, summaries, labels, ids, config, rng
    ):  # descriptions quote the cluster (grounded); one plants a name
        first = {c: summaries[int(np.flatnonzero(labels == c)[0])] for c in ids}
        return {
            c: {
                "name": f"topic {c}",
                "description": first[c] + (" Mostly from John Smith." if c == ids[0] else ""),
            }
            for c in ids
        }

    monkeypatch.setattr(pipeline, "name_clusters", namer)
    res = pipeline.analyse(
        rows, fac, pipeline.InsightsConfig(k=4, levels=1, llm_audit=False), model=object(), tok=None
    )
    descs = [c["description"] for c in res["levels"][0]]
    assert pipeline.WITHHELD in descs and not any("John" in d for d in descs)
    assert res["audit"]["withheld"] == 1


def test_known_topics_are_recovered_as_clusters():
    """The demo corpus (8 topics from templates): k-means on MiniLM embeddings of the scrubbed user turns
    recovers the topics (adjusted Rand index above 0.6)."""
    from heredity.insights.demo import load_demo
    from heredity.insights.pii import scrub
    from heredity.insights.pipeline import InsightsConfig, analyse

    rows = load_demo()
    fac = [{"summary": scrub(r["messages"][0]["content"]).text, "concern": False} for r in rows]
    res = analyse(rows, fac, InsightsConfig(levels=1))
    assert res["truth"]["ari"] > 0.6
    rare = next(t for t in res["truth"]["table"] if t["true_topic"] == "custody dispute advice")
    assert rare["cluster"] is None or rare["purity"] < 0.5  # 3 users: never a shown cluster of its own


def test_shipped_demo_corpus_is_the_generator_output():
    from heredity.insights.demo import demo_conversations, load_demo

    assert load_demo() == demo_conversations()


def test_bad_conversation_files_are_one_line_errors(tmp_path):
    from heredity.errors import HeredityError
    from heredity.insights.pipeline import read_conversations

    p = tmp_path / "c.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(HeredityError, match="user_id"):
        read_conversations(str(p))
    p.write_text("{not json\n")
    with pytest.raises(HeredityError, match="c.jsonl:1: not JSON"):
        read_conversations(str(p))
    with pytest.raises(HeredityError, match="no such file"):
        read_conversations(str(tmp_path / "missing.jsonl"))


def test_insights_pipeline_smoke_with_memoized_facets(store):
    """The whole pipeline on tiny:small: store steps with lineage back to the conversations, report files, and
    facets computed once per conversation (a second run over more conversations
    extracts only the new ones)."""
    import json
    from pathlib import Path

    from heredity.insights.demo import load_demo
    from heredity.insights.pipeline import InsightsConfig, run

    rows = load_demo()
    cfg = InsightsConfig(
        facet_model="tiny:small",
        k=3,
        min_users=2,
        min_conversations=3,
        max_chars=300,
        name_samples=2,
        contrast_samples=1,
        sample_chars=40,
    )
    from heredity.insights.facets import render
    from heredity.insights.pii import scrub

    def distinct(
        rs,
    ):  # facets are memoized by the scrubbed conversation's text: identical ones share an entry
        return len(
            {render([{**m, "content": scrub(m["content"]).text} for m in r["messages"]], 300) for r in rs}
        )

    first = run(store, cfg, rows[:36], "test", progress=False)
    cache = Path(store.home) / "cache" / "facets"
    assert len(list(cache.glob("*.json"))) == distinct(rows[:36])
    rep = json.loads((store.path(first["report"]) / "report.json").read_text())
    assert (
        rep["conversations"] == 36
        and rep["pii"]
        and sum(c["conversations"] for c in rep["levels"][0]) + rep["other"]["conversations"] == 36
    )
    for f in first["files"]:
        assert Path(f).stat().st_size > 0
    names = {(a["kind"], a["name"]) for a in _ancestors(store.lineage(first["report"]))}
    assert {
        ("dataset", "conversations"),
        ("dataset", "conversations-scrubbed"),
        ("dataset", "conversation-facets"),
    } <= names
    run(store, cfg, rows[:44], "test", progress=False)
    assert (
        len(list(cache.glob("*.json"))) == distinct(rows[:44]) > distinct(rows[:36])
    )  # only the new ones were added


def _ancestors(node):
    for child in node.get("parents", []):
        yield child
        yield from _ancestors(child)


def test_insights_page_and_api_show_only_shown_clusters(tmp_path):
    """A real `heredity serve`: /api/insights 404s with a hint until a report exists; then /insights and
    /api/insights show the clusters that passed the thresholds and nothing of the 4-user cluster; a
    conversation created with a user id is read back with it for insights."""
    import json

    import httpx
    from conftest import LiveServer

    from heredity.insights.pipeline import (
        InsightsConfig,
        analyse,
        markdown,
        outcome,
        plot,
        server_conversations,
    )
    from heredity.models import materialize
    from heredity.store import Store

    store = Store(tmp_path)
    tiny_id = materialize("tiny:micro", store)
    small_id = materialize("tiny:small", store)
    srv = LiveServer(tmp_path)
    try:
        r = httpx.get(srv.url + "/api/insights")
        assert r.status_code == 404 and "heredity insights" in r.json()["error"]["message"]
        assert "No insights report yet" in httpx.get(srv.url + "/insights").text
        rows = _rows_with_small_cluster()
        fac = [
            {"summary": x["messages"][0]["content"], "concern": False, "language": "English"} for x in rows
        ]
        cfg = InsightsConfig(k=9, levels=2)
        report = {
            "config": cfg.model_dump(),
            "source": "test",
            "pii": {"email": 3},
            **analyse(rows, fac, cfg),
        }
        report["outcome"] = outcome(report)

        def fn(ctx):
            out = ctx.output("report", "report", "insights", meta={"outcome": report["outcome"]})
            (out / "report.json").write_text(json.dumps(report))
            (out / "report.md").write_text(markdown(report))
            plot(report, out / "map.png")

        rid = store.run_step("insights", {"test": 1, "report": report}, [], fn)["report"]
        page = httpx.get(srv.url + "/insights").text
        api = httpx.get(srv.url + "/api/insights").json()
        assert api["id"] == rid and len(api["levels"][0]) == 8
        for c in api["levels"][0]:
            assert c["name"] in page
        for text in (page, json.dumps(api)):
            assert "zorblax" not in text.lower() and "secret-user" not in text
        assert httpx.get(srv.url + f"/artifacts/{rid}/files/map.png").headers["content-type"] == "image/png"
        _check_page_in_chromium(srv.url + "/insights", clusters=8)
        conv = httpx.post(srv.url + "/api/conversations", json={"model": tiny_id, "user": "alice"})
        assert conv.status_code == 201, conv.text
        # facets, names and audit ratings from an OpenAI-compatible endpoint (this server)
        # instead of a local model
        from heredity.insights.demo import load_demo
        from heredity.insights.pipeline import run

        remote = InsightsConfig(
            facet_model=f"openai:{small_id}@{srv.url}/v1",
            k=2,
            min_users=1,
            min_conversations=1,
            max_chars=120,
            name_samples=2,
            contrast_samples=1,
            sample_chars=30,
            levels=1,
        )
        res = run(store, remote, load_demo()[:12], "test", progress=False)
        rep = json.loads((store.path(res["report"]) / "report.json").read_text())
        assert rep["conversations"] == 12 and rep["audit"]["llm"] is True
    finally:
        srv.stop()
    from heredity.store.conversations import Conversations

    cid = conv.json()["id"]
    Conversations(store).append(
        cid, [{"role": "user", "content": "hello"}], {"role": "assistant", "content": "hi"}
    )
    assert server_conversations(store) == [
        {
            "conversation_id": cid,
            "user_id": "alice",
            "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
        }
    ]


def _check_page_in_chromium(url: str, clusters: int) -> None:
    """The page as a real headless Chromium renders it: one row per shown cluster, the map image loaded."""
    import os

    from heredity.server.browser import chromium_paths, headless_chromium

    if chromium_paths() is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium/chromedriver missing; `make test` installs the Debian packages "
                "chromium chromium-driver"
            )
        pytest.skip("chromium not installed (make test installs it)")
    from selenium.webdriver.common.by import By

    driver = headless_chromium()
    try:
        driver.get(url)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#topic-tree tr.cluster")) == clusters
        assert len(driver.find_elements(By.CSS_SELECTOR, "#topic-tree tr.other")) == 1
        width = driver.execute_script(
            "const i = document.querySelector('img.plot'); return i.complete ? i.naturalWidth : -1"
        )
        assert width > 100
    finally:
        driver.quit()
