import numpy as np
import pytest
import torch
from eval_builders import tiny_model

from atmorep.eval import attention
from atmorep.model import masking
from atmorep.model.attention import attention_weights


@pytest.fixture(scope="module")
def batch(dataset):
    from atmorep.model.batch import Batch

    b = Batch.collate([dataset[0], dataset[7]])
    return masking.apply(b, masking.ForecastMasking(1)(b))


def test_capture_recomputes_softmax_qk_of_the_chosen_layers_and_heads(batch):
    model = tiny_model()
    maps = attention.capture(model, batch.tokens, batch.info, {"t2m": [0, 1], "u10": [1]}, heads=[1, 3])
    N = 1 * 3 * 3 * 6
    assert maps["t2m"].shape == (2, 2, 2, N, N) and maps["u10"].shape == (2, 1, 2, N, N)
    torch.testing.assert_close(maps["t2m"].sum(-1), torch.ones(2, 2, 2, N))
    # the same weights from the layer input of a plain forward pass, by hand
    enc = model.encode(batch.tokens, batch.info)
    block = model.encoders["t2m"][1]
    q, k, _ = block.attn._self_qkv(block.ln(enc["t2m"][0]))
    torch.testing.assert_close(maps["t2m"][:, 1], attention_weights(q, k)[:, [1, 3]])


def test_capture_stops_after_the_last_requested_layer(batch):
    model = tiny_model()
    ran = []
    model.encoders["t2m"][1].register_forward_pre_hook(lambda m, a: ran.append("enc1"))
    model.decoders["t2m"][0].register_forward_pre_hook(lambda m, a: ran.append("dec"))
    attention.capture(model, batch.tokens, batch.info, {"t2m": [0]})
    assert ran == []  # neither the second encoder layer nor the decoder ran
    assert not model.encoders["t2m"][0].attn._forward_pre_hooks  # hooks removed
    with pytest.raises(ValueError, match="no encoder layer 5"):
        attention.capture(model, batch.tokens, batch.info, {"t2m": [5]})


def test_maps_are_georeferenced_to_token_footprints(dataset, batch):
    model = tiny_model()
    maps = attention.capture(model, batch.tokens, batch.info, {"t2m": [0, 1]})
    ds = attention.to_dataset(maps["t2m"].numpy(), dataset, [0, 7], "t2m", [0, 1], [0, 1, 2, 3])
    assert ds["attention"].dims == ("sample", "layer", "head", "query", "key")
    t_idx, y_idx, x_idx = dataset.indices(7, "t2m")
    store = dataset.stores["t2m"][0]
    q = ds.isel(sample=1)
    # token (l=0, t=2, y=1, x=4): time of its last step, mean latitude of its 9 rows, bounds around them
    flat = np.ravel_multi_index((0, 2, 1, 4), (1, 3, 3, 6))
    assert q["query_time"].values[flat] == store.times[t_idx[5]]
    assert q["query_latitude"].values[flat] == pytest.approx(store.lats[y_idx[9:18]].mean())
    lo, hi = sorted(q["query_latitude_bnds"].values[flat])
    assert lo < store.lats[y_idx[9:18]].min() and hi > store.lats[y_idx[9:18]].max()
    assert q["key_longitude"].values[flat] == pytest.approx(store.lons[x_idx[36:45]].mean() % 360)
    mean = attention.head_mean(ds["attention"])
    np.testing.assert_allclose(mean.sum("key"), 1, rtol=1e-5)
    roll = attention.rollout(ds["attention"])
    assert "layer" not in roll.dims and "head" not in roll.dims
    np.testing.assert_allclose(roll.sum("key"), 1, rtol=1e-5)
    # rollout of one layer is (A + I) / 2
    one = attention.rollout(ds["attention"].isel(layer=[0]))
    np.testing.assert_allclose(
        one.isel(sample=0).values, 0.5 * mean.isel(sample=0, layer=0).values + 0.5 * np.eye(54), rtol=1e-5
    )
