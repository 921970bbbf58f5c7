"""Issue 33, measured: a real `heredity serve` (loopback, an API key set, every bound at its default) while
one hostile client fires hostile and oversized requests at it and a well-behaved client streams chat
turns on a conversation.

The scenario is bench/attack.py's ``run`` (the benchmark runs it for longer and prints the table); here it
runs for ATTACK_S seconds on the tiny model and its result is asserted on.
"""

import importlib.util
from pathlib import Path

import pytest
from conftest import LiveServer, peaked_model

from heredity.store import Store

KEY = "attack-test-key-0123456789abcdef"
ATTACK_S = 25
BASELINE_TURNS = 10
RSS_GROWTH_MB = 500
# a turn joins the running batch at its next free slot, ahead of the hostile client's waiting prompts, so it
# never waits for a whole budget of hostile work: p95 bounded by that work's time alone (+ slack). Measured on
# 2 cores (session 24): p95 6.9 s against 24.4 s alone, and 2.6 s against 14.1 s once the queue took clients
# in turn. Before turns with other
# sampling parameters could join, a turn waited for the whole budget-filling request, 30–36 s against 14 s
# alone, which this bound fails
TTFT_SLOWDOWN, TTFT_SLACK_S = 1.0, 3.0


def _bench():
    """bench/attack.py as a module."""
    path = Path(__file__).resolve().parents[1] / "bench" / "attack.py"
    spec = importlib.util.spec_from_file_location("bench_attack", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


attack = _bench()


@pytest.fixture(scope="module")
def attack_home(tmp_path_factory) -> tuple[Path, str]:
    """A store of its own (the attack leaves conversations behind) with the peaked tiny model."""
    home = tmp_path_factory.mktemp("attack")
    return home, peaked_model(Store(home))


def test_a_hostile_client_does_not_starve_a_well_behaved_one(attack_home):
    """Under ATTACK_S seconds of attack (oversized and budget-filling work, echo over the context, cross-site
    POSTs, text/plain JSON, bodies over 1 MB, malformed JSON, unknown fields, wrong keys, disconnects while
    uploading, generating and streaming, two turns at once on one conversation, schemathesis's negative data),
    the well-behaved client's p95 time to first token stays within TTFT_SLOWDOWN × the time the server takes
    for the hostile client's whole budget of work alone (measured in the same test) + TTFT_SLACK_S; no answer
    to either client is a 5xx; every hostile request gets the answer its attack calls for; the server's RSS
    grows by less than RSS_GROWTH_MB; every turn of the well-behaved client is answered and read back stored
    as it was streamed; two turns at once on one conversation never both store."""
    home, aid = attack_home
    srv = LiveServer(home, env={"HEREDITY_API_KEY": KEY}, args=("--model", aid))
    try:
        res = attack.run(
            srv.url,
            aid,
            KEY,
            srv.proc.pid,
            Store(home).get(aid).path,
            duration=ATTACK_S,
            baseline_turns=BASELINE_TURNS,
            grace=60,
        )
    finally:
        srv.stop()
    print(attack.table(res))  # the measurement, shown by pytest -s and on failure
    quiet, loud = res["good"]["unattacked"], res["good"]["attacked"]

    assert res["good_5xx"] == 0 and res["hostile_5xx"] == 0, res["unexpected"]
    assert res["n_unexpected"] == 0, res["unexpected"]
    seen = res["hostile"]
    missing = [k for k in attack.EXPECTED if not k.startswith("queue flood") and not seen.get(k)]
    assert not missing, f"attacks never answered: {missing}"
    assert {"401", "429"} <= set(seen["wrong API key"]), seen["wrong API key"]  # the lock-out engaged
    assert "429" in seen["budget-filling work"], seen["budget-filling work"]  # the budget refused work
    assert not [p for p in res["two_turn_pairs"] if p == [200, 200]], res["two_turn_pairs"]
    assert [200, 409] in res["two_turn_pairs"], res["two_turn_pairs"]
    for pair in res["two_turn_stored"]:
        assert pair["stored_turns"] == pair["codes"].count(200), pair

    assert not res["good_failures"], res["good_failures"]
    # a turn joins the running batch whatever its sampling parameters, and takes the next free slot ahead of
    # the budget-filling request's waiting prompts: 11 turns answered in 26 s of attack on 2 cores, 24 once
    # the queue took clients in turn (session 24; 2–4 before, when a turn with other parameters waited for
    # that whole request, 30–36 s)
    assert quiet["turns"] == BASELINE_TURNS and loud["turns"] >= 5, res["good"]
    stored = res["stored"]
    assert stored["stored"] == stored["answered"] == len(res["turns"]), stored["mismatches"]

    heavy = res["heavy_alone"]
    assert heavy["status"] == 200, heavy
    bound = TTFT_SLOWDOWN * heavy["seconds"] + TTFT_SLACK_S
    assert loud["ttft_p95_s"] <= bound, (
        f"p95 time to first token under attack {loud['ttft_p95_s']:.1f} s > {bound:.1f} s "
        f"({TTFT_SLOWDOWN}× the budget's work alone, {heavy['seconds']:.1f} s, + {TTFT_SLACK_S} s); "
        "unattacked "
        f"median {quiet['ttft_median_s'] * 1000:.0f} ms"
    )

    rss = res["rss_mb"]
    assert rss["start"] > 0 and rss["peak"] - rss["start"] < RSS_GROWTH_MB, rss
