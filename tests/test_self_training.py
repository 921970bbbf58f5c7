"""Self-training's loop on a tiny model: every arm is a chain of steps (model → samples → verified set → next
model); a round's training set holds only verified solutions and never a test problem; ReST-EM fine-tunes from
the base each round and its continuing variant from the previous round; a rerun computes nothing."""

import json

from heredity.data.problems import evaluate as evaluate_expression


def accept_if_even_length(problem, completion):
    """A user checker (module:function) that a random tiny model passes about half the time."""
    return len(completion.strip()) % 2 == 0


def accept_all(problem, completion):
    return True


def test_the_arms_are_chains_of_steps_with_the_right_starting_points(tmp_path):
    from conftest import stored_tiny

    from heredity.experiments import self_training as X
    from heredity.store import Store, read_table

    store = Store(tmp_path / "h")
    tiny = stored_tiny(
        store, "tiny-long", max_position_embeddings=1024
    )  # byte tokens: a problem is ~270 of them
    cfg = X.Config(
        base=tiny,
        train_problems=6,
        test_problems=4,
        ood_problems=4,
        levels=[1, 2],
        samples=3,
        keep=2,
        rounds=2,
        eval_samples=3,
        ks=[1, 2],
        max_new_tokens=12,
        arms=["sft_gold", "rest_em", "rest_em_continue"],
        checker="test_self_training:accept_if_even_length",
        shots=0,
        finetune=X._ft(max_length=512, batch_size=4, epochs=1),
    )
    out = X.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    res = rep["results"]
    base = res["base"][0]["model"]
    assert [x["round"] for x in res["rest_em"]] == [1, 2] and [
        x["round"] for x in res["rest_em_continue"]
    ] == [1, 2]
    sets = X.problem_sets(cfg)
    test_prompts = set(X._prompts(sets["test"] + sets["ood"], cfg.shots))
    check = X.load_checker(cfg.checker)

    def chain(model):  # merged model <- adapter <- finetune(start, verified set); verified set <- samples
        ft = store.step_of(store.step_of(model).inputs[0])
        start, data = ft.inputs
        return start, data, store.step_of(data).inputs

    for arm in ("rest_em", "rest_em_continue"):
        for k, x in enumerate(res[arm]):
            start, data, source = chain(x["model"])
            want = base if arm == "rest_em" or k == 0 else res[arm][k - 1]["model"]
            assert start == want, f"{arm} round {x['round']} starts from {start}, not {want}"
            previous = (
                base if k == 0 else res[arm][k - 1]["model"]
            )  # both arms sample from the last round's model
            assert store.step_of(source[0]).op == "sample" and store.step_of(source[0]).inputs == [previous]
            rows = read_table(store.path(data)).to_pylist()
            assert rows and len(rows) == x["kept"]["rows"]
            assert all(check(None, r["completion"]) for r in rows), "only verified solutions are trained on"
            assert not {r["prompt"] for r in rows} & test_prompts, "never a test problem"
            per = {}
            for r in rows:
                per[r["prompt"]] = per.get(r["prompt"], 0) + 1
            assert max(per.values()) <= cfg.keep
    gold_rows = read_table(store.path(chain(res["sft_gold"][0]["model"])[1])).to_pylist()
    assert len(gold_rows) == 6 and all(
        evaluate_expression(p["expression"]) == p["answer"] for p in sets["train"]
    )
    e = res["rest_em"][-1]["eval"]
    assert set(e) >= {"greedy_test", "greedy_ood", "greedy_train", "pass@1", "pass@2", "majority_vote"}
    assert e["pass@1"]["lo"] <= e["pass@1"]["mean"] <= e["pass@1"]["hi"] <= e["pass@2"]["hi"] + 1e-9
    assert (
        "unit of every interval: problems" in out["markdown"] and "## Planned comparisons" in out["markdown"]
    )
    assert {(c["a"][0], c["b"][0]) for c in rep["comparisons"]} >= {
        ("rest_em", "sft_gold"),
        ("rest_em", "rest_em_continue"),
    }
    assert (
        e["pass_curve"]["1"] == e["pass@1"]["mean"] and len(e["greedy_test_items"]) == e["greedy_test"]["n"]
    )
    again = json.loads((store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    assert again["results"] == res, "a rerun computes nothing new"


def test_star_rationalizes_failed_problems_with_the_answer_as_a_hint_and_trains_without_it(tmp_path):
    from conftest import stored_tiny

    from heredity.experiments import self_training as X
    from heredity.store import Store, read_table

    store = Store(tmp_path / "h")
    tiny = stored_tiny(store, "tiny-long", max_position_embeddings=1024)
    cfg = X.Config(
        base=tiny,
        train_problems=8,
        test_problems=2,
        ood_problems=2,
        levels=[1],
        samples=1,
        keep=1,
        rounds=1,
        eval_samples=1,
        ks=[1],
        max_new_tokens=12,
        arms=["star"],
        checker="test_self_training:accept_if_even_length",
        shots=0,
        finetune=X._ft(max_length=512, batch_size=4, epochs=1),
    )
    rep = json.loads((store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    (x,) = rep["results"]["star"]
    kept = x["kept"]
    assert (
        kept["rationalized_problems"] > 0 and kept["rows"] > kept["rationalized_rows"] > 0
    )  # seeded: both happen
    ft = store.step_of(store.step_of(x["model"]).inputs[0])
    data = ft.inputs[1]
    samples, hinted = store.step_of(data).inputs
    hint_prompts = read_table(store.path(hinted)).column("prompt").to_pylist()
    assert all("(Hint: the final answer is" in p for p in hint_prompts)
    assert len(hint_prompts) == cfg.train_problems - (
        kept["problems_with_any"] - kept["rationalized_problems"]
    )
    rows = read_table(store.path(data)).to_pylist()
    assert len(rows) == kept["rows"] and not any("Hint" in r["prompt"] for r in rows), (
        "trained on the question alone"
    )
    assert ft.inputs[0] == tiny


def test_compute_matched_draws_rounds_times_the_samples_from_the_base_and_shares_rest_ems_first_draw(
    tmp_path,
):
    from conftest import stored_tiny

    from heredity.experiments import self_training as X
    from heredity.store import Store, read_table

    store = Store(tmp_path / "h")
    tiny = stored_tiny(store, "tiny-long", max_position_embeddings=1024)
    cfg = X.Config(
        base=tiny,
        train_problems=4,
        test_problems=2,
        ood_problems=2,
        levels=[1],
        samples=2,
        keep=8,
        rounds=3,
        eval_samples=1,
        ks=[1],
        max_new_tokens=12,
        arms=["rest_em", "compute_matched"],
        checker="test_self_training:accept_all",
        shots=0,
        finetune=X._ft(max_length=512, batch_size=4, epochs=1),
    )
    res = json.loads((store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text())[
        "results"
    ]

    def sources(model):  # merged model <- adapter <- finetune(start, verified set) <- sample steps
        ft = store.step_of(store.step_of(model).inputs[0])
        return ft.inputs[0], store.step_of(ft.inputs[1]).inputs

    start, draws = sources(res["compute_matched"][0]["model"])
    assert start == tiny and len(draws) == cfg.rounds and len(set(draws)) == cfg.rounds
    assert all(store.step_of(d).op == "sample" and store.step_of(d).inputs == [tiny] for d in draws), (
        "all from the base"
    )
    assert sum(len(read_table(store.path(d))) for d in draws) == cfg.rounds * cfg.samples * cfg.train_problems
    assert draws[0] == sources(res["rest_em"][0]["model"])[1][0], "its first draw is rest_em's round-1 draw"
    assert res["compute_matched"][0]["kept"]["rows"] >= res["rest_em"][0]["kept"]["rows"]


def test_the_worked_examples_are_fixed_and_never_a_problem():
    from heredity.experiments import self_training as X

    cfg = X.Config(train_problems=300, test_problems=100, ood_problems=50, shots=3)
    shown = X.examples(3)
    assert shown == X.examples(3) and len(shown) == 3 and [e["steps"] for e in shown] == [1, 2, 1]
    sets = X.problem_sets(cfg)
    assert not {e["question"] for e in shown} & {p["question"] for v in sets.values() for p in v}
    p = sets["test"][0]
    text = X.prompt_of(p, 3)
    assert text.count("Problem:") == 4 and text.endswith(f"Problem: {p['question']}\nSolution:")
    assert (
        all(e["solution"] in text for e in shown)
        and "Hint" not in text
        and "Hint" in X.prompt_of(p, 3, hint=True)
    )


def test_with_worked_examples_sampling_stops_at_the_next_problem(tmp_path):
    from conftest import stored_tiny

    from heredity.experiments import self_training as X
    from heredity.store import Store, read_table

    store = Store(tmp_path / "h")
    tiny = stored_tiny(store, "tiny-long", max_position_embeddings=1024)
    cfg = X.Config(shots=1, max_new_tokens=16)
    did, comps = X._samples(store, tiny, X.problem_sets(cfg)["test"][:2], 2, 1.0, cfg, "t", progress=False)
    assert store.step_of(did).config["sample"]["stop"] == ["\nProblem:"]
    assert (
        len(comps) == 2
        and all(len(c) == 2 for c in comps)
        and not any("\nProblem:" in x for c in comps for x in c)
    )
    assert read_table(store.path(did)).num_rows == 4
    zero = X.Config(shots=0, max_new_tokens=16)
    did0, _ = X._samples(store, tiny, X.problem_sets(zero)["test"][:1], 1, 1.0, zero, "t", progress=False)
    assert store.step_of(did0).config["sample"]["stop"] == []


def test_the_grpo_arm_uses_the_checker_as_reward_at_the_rest_em_sample_budget(tmp_path):
    from conftest import stored_tiny

    from heredity.experiments import self_training as X
    from heredity.store import Store, read_table

    store = Store(tmp_path / "h")
    tiny = stored_tiny(store, "tiny-long", max_position_embeddings=1024)
    cfg = X.Config(
        base=tiny,
        train_problems=4,
        test_problems=2,
        ood_problems=2,
        levels=[1],
        samples=2,
        keep=1,
        rounds=2,
        eval_samples=1,
        ks=[1],
        max_new_tokens=8,
        arms=["grpo"],
        grpo_batch=4,
        shots=0,
        checker="test_self_training:accept_if_even_length",
    )
    rep = json.loads((store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    (x,) = rep["results"]["grpo"]
    assert x["completions"] == cfg.rounds * cfg.samples * cfg.train_problems  # 4 steps × 4 = 2 × 2 × 4
    step = store.step_of(x["model"])
    assert step.op == "grpo-verifiable" and step.config["checker"] == cfg.checker and step.inputs[0] == tiny
    assert step.config["config"]["num_generations"] == cfg.samples and step.metrics["steps"] == 4
    rewards = [h["reward"] for h in step.metrics["log"] if "reward" in h]
    assert rewards and all(0 <= r <= 1 for r in rewards)  # a 0/1 checker reward, averaged per step
    rows = read_table(store.path(step.inputs[1])).to_pylist()
    assert [r["answer"] for r in rows] == [p["answer"] for p in X.problem_sets(cfg)["train"]]
    every = cfg.model_copy(update={"checker": "test_self_training:accept_all", "rounds": 1})
    rep = json.loads((store.path(X.run(store, every, progress=False)["report"]) / "report.json").read_text())
    log = store.step_of(rep["results"]["grpo"][0]["model"]).metrics["log"]
    assert [h["reward"] for h in log if "reward" in h] == [1.0, 1.0], "the checker is the reward"


def test_options_it_cannot_honour_are_refused():
    import pytest

    from heredity.experiments import self_training as X

    for kw, msg in [
        ({"arms": ["rest_em", "dpo"]}, "unknown arm 'dpo'"),
        ({"ks": [1, 32]}, "pass@32 needs"),
        ({"samples": 6, "arms": ["grpo"]}, "multiple of samples 6"),
        ({"endpoint": "localhost:8000"}, "is not a URL"),
        ({"endpoint_model": "served-base"}, "set endpoint too"),
        ({"endpoint": "http://h/v1", "arms": ["rest_em", "grpo"]}, "drop grpo from arms"),
        ({"endpoint": "http://h/v1", "finetune": X._ft(method="full")}, "must be lora"),
    ]:
        with pytest.raises(ValueError, match=msg):
            X.Config(**kw)
    X.Config(samples=6, arms=["rest_em"])  # the GRPO group size matters only with the grpo arm


def test_planned_comparisons_are_paired_over_test_problems_and_holm_adjusted():
    from heredity.experiments import self_training as X

    def res(arm, rnd, items):
        return {"round": rnd, "eval": {"greedy_test_items": items}}

    n = 40
    base = [0] * n
    gold = [1] * 10 + [0] * 30
    rest = [
        [1] * 12 + [0] * 28,
        [1] * 30 + [0] * 10,
    ]  # round 2 right on 20 problems gold misses, wrong on none it gets
    results = {
        "base": [res("base", 0, base)],
        "sft_gold": [res("sft_gold", 1, gold)],
        "rest_em": [res("rest_em", 1, rest[0]), res("rest_em", 2, rest[1])],
    }
    rows = {(X._label(r["a"]), X._label(r["b"])): r for r in X.compare(results)}
    assert set(rows) == {
        ("sft_gold r1", "base"),
        ("rest_em r2", "base"),
        ("rest_em r2", "sft_gold r1"),
        ("rest_em r2", "rest_em r1"),
    }
    t = rows[("rest_em r2", "sft_gold r1")]["test"]
    assert t["discordant"] == [20, 0] and abs(t["diff"] - 0.5) < 1e-12 and t["lo"] < 0.5 < t["hi"]
    assert t["p"] == 2 * 0.5**20 and t["unit"].startswith("test problems")
    assert all(r["p_holm"] >= r["test"]["p"] for r in rows.values())
    same = X.compare({"base": [res("base", 0, gold)], "sft_gold": [res("sft_gold", 1, gold)]})[0]
    assert same["test"]["p"] == 1.0 and same["test"]["lo"] < 0 < same["test"]["hi"], (
        "no difference: a null, never zero-width"
    )
    words = X.outcome(
        {
            "results": {"base": [{"eval": {"greedy_test": {"k": 0, "n": n}}}]},
            "comparisons": X.compare(results),
        }
    )
    assert "rest_em r2 vs sft_gold r1: significantly higher, as hypothesised" in words


def test_users_bring_their_own_problems_and_a_regex_checker(tmp_path):
    import pytest
    from conftest import stored_tiny

    from heredity.data.problems import load_problems
    from heredity.errors import HeredityError
    from heredity.experiments import self_training as X
    from heredity.store import Store, read_table

    f = tmp_path / "mine.jsonl"
    rows = [
        {"question": f"Name a word with {i} letters.", "answer": i, "split": "train" if i < 6 else "test"}
        for i in range(2, 9)
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sets = load_problems(f)
    assert [len(sets[s]) for s in ("train", "test", "ood")] == [4, 3, 0]
    store = Store(tmp_path / "h")
    tiny = stored_tiny(store, "tiny-long", max_position_embeddings=1024)
    cfg = X.Config(
        base=tiny,
        problems_file=str(f),
        checker="regex:.*",
        samples=2,
        keep=1,
        rounds=1,
        eval_samples=2,
        ks=[1, 2],
        max_new_tokens=8,
        arms=["rft"],
        shots=0,
        finetune=X._ft(max_length=512, batch_size=4, epochs=1),
    )
    with pytest.raises(HeredityError, match=r"needs \{answer\}"):
        X.run(store, cfg, progress=False)
    cfg = cfg.model_copy(update={"checker": "regex:.*{answer}.*"})
    rep = json.loads((store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    assert (
        rep["problems"] == {"train": 4, "test": 3, "ood": 0}
        and "greedy_ood" not in rep["results"]["base"][0]["eval"]
    )
    prompts = {X.prompt_of(p, 0) for p in sets["train"]}
    x = rep["results"]["rft"][0]
    if x["model"]:  # a random tiny model may write the digit; then only train problems are trained on
        data = store.step_of(store.step_of(store.step_of(x["model"]).inputs[0]).inputs[0]).inputs[1]
        assert {r["prompt"] for r in read_table(store.path(data)).to_pylist()} <= prompts
    with pytest.raises(HeredityError, match="needs a 'solution'"):
        X.problem_sets(cfg.model_copy(update={"arms": ["sft_gold"]}))
    for text, msg in [
        ('{"question": "q", "answer": 1, "split": "dev"}', "'split' must be one of"),
        ('{"question": "q"}', ":1: a problem needs"),
        ("not json", ":1: not JSON"),
        ('{"question": "q", "answer": 1, "split": "train"}\n' * 2, ":2: the question appears twice"),
        ('{"question": "q", "answer": 1, "split": "train"}', "no test problems"),
    ]:
        f.write_text(text)
        with pytest.raises(HeredityError, match=msg):
            load_problems(f)
    with pytest.raises(HeredityError, match="not found"):
        load_problems(tmp_path / "missing.jsonl")


def test_through_an_endpoint_every_sample_comes_from_the_server_and_each_round_is_loaded_as_an_adapter(
    tmp_path,
):
    """endpoint=...: the loop samples and evaluates only through an OpenAI-compatible server (here
    `heredity serve` on loopback, over the same store, answering vLLM's /v1/load_lora_adapter); each round's
    adapter is loaded by its id and sampled unmerged, a continuing chain as one stacked adapter on the base;
    every sample step points to the stored model it came from. The server's greedy answers are the in-process
    ones (same prompts, same weights)."""
    import httpx
    from conftest import LiveServer, stored_tiny

    from heredity.engine import SampleConfig, sample_step
    from heredity.experiments import self_training as X
    from heredity.models import merge_adapter
    from heredity.store import Store, read_table

    home = tmp_path / "h"
    store = Store(home)
    tiny = stored_tiny(store, "tiny-long-peaked", max_position_embeddings=1024, initializer_range=0.5)
    srv = LiveServer(home)
    try:
        url = srv.url + "/v1"
        import pytest

        from heredity.errors import HeredityError

        with pytest.raises(HeredityError, match="does not serve 'no-such-base'.*endpoint_model"):
            X.run(store, X.Config(base=tiny, endpoint=url, endpoint_model="no-such-base"), progress=False)
        cfg = X.Config(
            base=tiny,
            endpoint=url,
            endpoint_model=tiny,
            train_problems=6,
            test_problems=3,
            ood_problems=2,
            train_eval=2,
            levels=[1, 2],
            samples=3,
            keep=2,
            rounds=2,
            eval_samples=2,
            ks=[1, 2],
            max_new_tokens=8,
            arms=["rest_em", "rest_em_continue"],
            checker="test_self_training:accept_all",
            shots=0,
            finetune=X._ft(max_length=512, batch_size=4, epochs=1, lora_r=4, lora_alpha=8),
        )
        out = X.run(store, cfg, progress=False)
        res = json.loads((store.path(out["report"]) / "report.json").read_text())["results"]
        a1, a2 = (x["model"] for x in res["rest_em_continue"])
        assert store.get(res["rest_em"][1]["model"]).kind == "adapter"
        assert store.get(res["rest_em"][1]["model"]).meta["base"] == tiny, "from the base, served on the base"
        assert store.get(a1).kind == "adapter" and store.step_of(a2).op == "stack-adapters"
        first = store.step_of(a2).inputs[0]
        assert first == a1 and store.get(a2).meta["base"] == tiny, (
            "a continuing chain is one adapter on the base"
        )
        steps = [st for d in store.list("dataset") for st in store.producers(d.id) if st.op == "sample"]
        assert steps and all(st.config["endpoint"] == [st.config["endpoint"][0], url] for st in steps), (
            "nothing is sampled in process"
        )
        served = {st.config["endpoint"][0]: st.inputs for st in steps}
        assert served[tiny] == [tiny] and served[a2] == [a2] and served[a1] == [a1], (
            "each sample step names its model"
        )
        models = httpx.get(url + "/models").json()["data"]
        assert {a1, a2, res["rest_em"][0]["model"]} <= {m["id"] for m in models}, "loaded under their ids"
        # the endpoint's greedy answers for the stacked chain are the in-process answers of the merged chain
        ps = X._prompts(X.problem_sets(cfg)["test"], cfg.shots)
        greedy = SampleConfig(temperature=0, max_new_tokens=8, batch_size=cfg.sample_batch)
        chain_model = merge_adapter(store, store.step_of(a2).inputs[1], name="chain-check")
        local = read_table(store.path(sample_step(store, chain_model, ps, greedy, progress=False))).column(
            "completion"
        )
        remote = read_table(
            store.path(sample_step(store, f"openai:{a2}@{url}", ps, greedy, progress=False, serves=a2))
        )
        assert remote.column("completion").to_pylist() == local.to_pylist() and any(local.to_pylist())
        # the vLLM route's answers: the same name twice is refused (400), a path outside
        # the store is not read (404)
        r = httpx.post(url + "/load_lora_adapter", json={"lora_name": a1, "lora_path": str(store.path(a1))})
        assert r.status_code == 400 and "already been loaded" in r.text
        r = httpx.post(url + "/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)})
        assert r.status_code == 404 and "not an adapter directory in this server's store" in r.text
        r = httpx.post(url + "/load_lora_adapter", json={"lora_name": "x", "lora_path": "~nosuchuser/" + a1})
        assert r.status_code == 404, r.text
        # a name may not shadow another model: a bundled name, another id, a stored model's name
        for taken in ("smollm2-135m-instruct", tiny, store.get(tiny).name):
            r = httpx.post(
                url + "/load_lora_adapter", json={"lora_name": taken, "lora_path": str(store.path(a1))}
            )
            assert r.status_code == 400 and "already names a model" in r.text, (taken, r.text)
        # a new name serves the adapter (listed once under it); in place replaces; unloaded, it is gone
        ok = httpx.post(
            url + "/load_lora_adapter", json={"lora_name": "round-1", "lora_path": str(store.path(a1))}
        )
        assert ok.status_code == 200 and "added successfully" in ok.text
        ids = [m["id"] for m in httpx.get(url + "/models").json()["data"]]
        assert ids.count("round-1") == 1 and ids.count(a1) == 1, (
            "an adapter loaded under its own id is listed once"
        )
        chat = {
            "model": "round-1",
            "messages": [{"role": "user", "content": "1+1"}],
            "max_tokens": 3,
            "temperature": 0,
        }
        assert httpx.post(url + "/chat/completions", json=chat).status_code == 200
        again = {"lora_name": "round-1", "lora_path": str(store.path(a2)), "load_inplace": True}
        assert httpx.post(url + "/load_lora_adapter", json=again).status_code == 200
        assert httpx.post(url + "/unload_lora_adapter", json={"lora_name": "round-1"}).status_code == 200
        assert httpx.post(url + "/chat/completions", json=chat).status_code == 404
        assert httpx.post(url + "/unload_lora_adapter", json={"lora_name": "round-1"}).status_code == 404
    finally:
        srv.stop()
