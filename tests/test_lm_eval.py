"""lm-evaluation-harness itself against ``heredity serve``: a small local multiple-choice task scored twice —
by lm-eval's in-process ``hf`` backend on the stored checkpoint and by ``local-completions`` (its default
token-id requests) against the server on the same checkpoint — must give the same per-item
log-likelihoods and accuracy."""

import json
import os

import pytest

from heredity.store import Store

ITEMS = [
    {"question": "The owl sat on the", "choices": [" branch", " cloud", " sea", " car"], "answer": 0},
    {"question": "Two plus two is", "choices": [" four", " seven", " nine", " blue"], "answer": 0},
    {"question": "The sky is", "choices": [" green", " blue", " loud", " square"], "answer": 1},
    {"question": "A cat says", "choices": [" moo", " quack", " meow", " oink"], "answer": 2},
    {"question": "Ice is", "choices": [" hot", " cold", " purple", " late"], "answer": 1},
    {"question": "Fish live in", "choices": [" trees", " deserts", " clouds", " water"], "answer": 3},
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_eval_task")
    (d / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    (d / "heredity_mc.yaml").write_text(f"""task: heredity_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / "items.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    return d


def _run(model: str, model_args: str, task_dir) -> tuple[float, list[list[float]]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["heredity_mc"],
        log_samples=True,
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=4,
    )
    samples = sorted(res["samples"]["heredity_mc"], key=lambda s: s["doc_id"])
    ll = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    return res["results"]["heredity_mc"]["acc,none"], ll


def test_local_completions_against_the_server_equals_the_hf_backend(
    live_server, server_home, task_dir, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", os.environ.get("OPENAI_API_KEY", "unused"))
    home, aid = server_home
    ckpt = Store(home).path(aid)
    acc_hf, ll_hf = _run("hf", f"pretrained={ckpt},dtype=float32,device=cpu", task_dir)
    acc_api, ll_api = _run(
        "local-completions",
        f"model={aid},base_url={live_server.url}/v1/completions,"
        f"tokenizer={ckpt},tokenizer_backend=huggingface,num_concurrent=1,max_retries=1",
        task_dir,
    )
    # the same with text prompts (tokenized_requests=False): the server tokenizes them as
    # lm-eval did, no BOS added
    acc_txt, ll_txt = _run(
        "local-completions",
        f"model={aid},base_url={live_server.url}/v1/completions,"
        f"tokenizer={ckpt},tokenizer_backend=huggingface,tokenized_requests=False,max_retries=1",
        task_dir,
    )
    assert len(ll_hf) == len(ITEMS) and all(len(x) == 4 for x in ll_api)
    for a, b, c in zip(ll_hf, ll_api, ll_txt, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and a == pytest.approx(c, abs=1e-4), (a, b, c)
    assert acc_hf == acc_api == acc_txt
