"""The steering-vector student changes only its vector."""

import torch

from heredity.engine.steer import SteerConfig, load_vector, save_vector, steer, train_vector

ROWS = [{"prompt": f"say {i}", "completion": "owl owl owl"} for i in range(16)]


def test_only_the_vector_changes_and_it_steers(tiny, tmp_path):
    from heredity.models import load

    s, aid, _, _ = tiny
    model, tok = load(aid, s)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    v, m = train_vector(model, tok, ROWS, SteerConfig(layer=1, lr=0.05, max_steps=25, batch_size=8))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed: only the vector may"
    assert v.shape == (model.config.hidden_size,) and m["norm"] > 0
    assert m["loss_last"] < m["loss_first"], m["loss_curve"]
    ids = tok("say 3", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = model(ids).logits
        with steer(model, v, 1):
            steered = model(ids).logits
        again = model(ids).logits
    assert not torch.allclose(plain, steered) and torch.equal(plain, again), (
        "the hook acts only inside the block"
    )
    save_vector(tmp_path, v, 1)
    v2, layer = load_vector(tmp_path)
    assert torch.equal(v2, v) and layer == 1
