"""The zoo's MIL models over packed bags, and the keyed (reproducible) dropout they use."""
from __future__ import annotations

import pytest
import torch

from abmil.data.bags import pack, unpack
from abmil.nn.dropout import KeyedDropout, hash_uniform, set_dropout_key
from abmil.nn.models import DeepSupervisedMINet, EmbeddingMIL, InstanceMIL, MILOutput, ResidualMINet
from abmil.nn.pooling import make_pool
from abmil.nn.segment import segment_sum
from abmil.nn.zoo import ATTENTION_KEYS, MODEL_KEYS, benchmark_model, check_model_key

IN_DIM = 166
SIZES = (1, 6, 23)
TOL = 1e-5
INSTANCE_KEYS = ("instance-max", "instance-mean")


def build(key: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return benchmark_model(key, IN_DIM)


def make_bags(sizes=SIZES, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, IN_DIM, generator=g) for n in sizes]


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- zoo models
def test_model_keys_and_check():
    assert len(set(MODEL_KEYS)) == len(MODEL_KEYS) == 8
    assert set(ATTENTION_KEYS) <= set(MODEL_KEYS)
    for key in MODEL_KEYS:
        assert check_model_key(key) == key
    with pytest.raises(ValueError, match="unknown model"):
        check_model_key("transformer")
    with pytest.raises(ValueError):
        benchmark_model("nope", IN_DIM)


@pytest.mark.parametrize("key", MODEL_KEYS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_shapes_and_range(key, mode):
    model = build(key)
    model.train(mode == "train")
    bags = make_bags()
    x, bag_index = pack(bags)
    out = model(x, bag_index, len(bags))
    assert isinstance(out, MILOutput)
    assert out.prob.shape == (3,)
    assert out.prob.dtype == torch.float32
    assert torch.isfinite(out.prob).all()
    assert ((out.prob > 0) & (out.prob < 1)).all()
    # n_bags inferred from bag_index gives the same in eval mode
    if mode == "eval":
        assert torch.equal(model(x, bag_index).prob, out.prob)


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_packed_equals_alone_eval(key):
    model = build(key).eval()
    bags = make_bags(seed=1)
    x, bag_index = pack(bags)
    with torch.no_grad():
        out = model(x, bag_index, len(bags))
        scores = out.instance_scores()
        parts = unpack(scores, bag_index, len(bags)) if scores is not None else [None] * len(bags)
        for i, b in enumerate(bags):
            alone = model(b, torch.zeros(b.shape[0], dtype=torch.long), 1)
            assert maxdiff(out.prob[i:i + 1], alone.prob) < TOL, (key, i)
            if scores is not None:
                assert maxdiff(parts[i], alone.instance_scores()) < TOL, (key, i)
            for head, head_alone in zip(out.aux_logits, alone.aux_logits):
                assert maxdiff(head[i:i + 1], head_alone) < TOL


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_instance_scores(key):
    model = build(key).eval()
    bags = make_bags(seed=2)
    x, bag_index = pack(bags)
    with torch.no_grad():
        out = model(x, bag_index, len(bags))
    s = out.instance_scores()
    if key in ATTENTION_KEYS:
        assert out.weights is not None and out.instance_prob is None
        assert s.shape == (x.shape[0],)
        assert maxdiff(segment_sum(s, bag_index, len(bags)), torch.ones(len(bags))) < 1e-6
        assert s[0].item() == pytest.approx(1.0)  # the one-instance bag
    elif key in INSTANCE_KEYS:
        assert out.weights is None and out.instance_prob is not None
        assert s.shape == (x.shape[0],)
        assert ((s > 0) & (s < 1)).all()
        for i, part in enumerate(unpack(s, bag_index, len(bags))):
            ref = part.max() if key == "instance-max" else part.mean()
            assert out.prob[i].item() == pytest.approx(ref.item(), abs=1e-6)
    else:
        assert s is None


def test_deep_supervision_heads():
    model = build("mi-net-ds").eval()
    bags = make_bags(seed=3)
    x, bag_index = pack(bags)
    with torch.no_grad():
        out = model(x, bag_index, len(bags))
    assert len(out.aux_logits) == 3
    assert all(l.shape == (3, 1) for l in out.aux_logits)
    assert maxdiff(out.prob, torch.stack([torch.sigmoid(l[:, 0]) for l in out.aux_logits]).mean(0)) < 1e-7
    assert maxdiff(torch.sigmoid(out.logits[:, 0]), out.prob) < 1e-6  # the pooled probability's logit


def test_model_structure():
    assert isinstance(build("attention"), EmbeddingMIL) and not build("attention").pool.gated
    assert build("gated").pool.gated
    assert isinstance(build("instance-max"), InstanceMIL)
    assert isinstance(build("mi-net-ds"), DeepSupervisedMINet)
    assert isinstance(build("mi-net-rc"), ResidualMINet)
    # attention models: dropout after each of the 3 encoder layers; mi-Net/MI-Net: one
    n_drop = {k: sum(isinstance(m, KeyedDropout) for m in build(k).modules()) for k in MODEL_KEYS}
    assert n_drop["attention"] == n_drop["gated"] == 3
    assert n_drop["instance-max"] == n_drop["embedding-max"] == 1
    assert n_drop["mi-net-ds"] == n_drop["mi-net-rc"] == 3
    no_dropout = benchmark_model("gated", IN_DIM, attention_dropout=0.0)
    assert sum(isinstance(m, KeyedDropout) for m in no_dropout.modules()) == 0
    with pytest.raises(ValueError):
        make_pool("median", 4)
    with pytest.raises(ValueError):
        InstanceMIL(build("attention").encoder, pooling="attention")


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_same_seed_same_init(key):
    a, b = build(key, 5), build(key, 5)
    c = build(key, 6)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_keyed_dropout_in_models_reproducible(key):
    model = build(key).train()
    bags = make_bags(seed=4)
    x, bag_index = pack(bags)
    set_dropout_key(model, 3, 10)
    p1 = model(x, bag_index, 3).prob
    torch.manual_seed(123)  # the global generator must not matter once keyed
    p2 = model(x, bag_index, 3).prob
    assert torch.equal(p1, p2)
    set_dropout_key(model, 3, 11)
    p3 = model(x, bag_index, 3).prob
    assert not torch.equal(p1, p3)
    model.eval()
    with torch.no_grad():
        pe = model(x, bag_index, 3).prob
    assert not torch.equal(pe, p1)


# ----------------------------------------------------------------------------- KeyedDropout
def keyed(p=0.5, salt=0, seed=0, step=0) -> KeyedDropout:
    d = KeyedDropout(p, salt=salt).train()
    set_dropout_key(d, seed, step)
    return d


def mask_of(d: KeyedDropout, shape=(64, 32)) -> torch.Tensor:
    return d(torch.ones(shape)) != 0


def test_same_key_same_mask():
    m1 = mask_of(keyed(seed=7, step=11, salt=3))
    m2 = mask_of(keyed(seed=7, step=11, salt=3))
    torch.manual_seed(999)
    m3 = mask_of(keyed(seed=7, step=11, salt=3))
    assert torch.equal(m1, m2) and torch.equal(m1, m3)


def test_different_key_different_mask():
    base = mask_of(keyed(seed=7, step=11, salt=3))
    for other in (keyed(seed=7, step=12, salt=3), keyed(seed=8, step=11, salt=3), keyed(seed=7, step=11, salt=4)):
        m = mask_of(other)
        assert not torch.equal(base, m)
        # and not merely shifted a little: about half the elements disagree
        assert 0.3 < (base != m).float().mean().item() < 0.7


def test_steps_give_uncorrelated_masks():
    d = keyed(p=0.5, seed=1)
    masks = []
    for step in range(20):
        set_dropout_key(d, 1, step)
        masks.append(mask_of(d, (32, 32)))
    for i in range(20):
        for j in range(i):
            assert not torch.equal(masks[i], masks[j])


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.8])
def test_mask_fraction_and_scaling(p):
    d = keyed(p=p, seed=42, step=5, salt=1)
    out = d(torch.ones(1000, 1000))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 0.02
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1.0 / (1.0 - p)))
    # inverted dropout keeps the mean
    assert abs(out.mean().item() - 1.0) < 0.05


def test_hash_uniform_range_and_shape():
    keys = torch.tensor([[0, 0], [1, 0], [0, 1], [2**31, 10**6]], dtype=torch.int64)
    u = hash_uniform(keys, salt=5, n=10000)
    assert u.shape == (4, 10000) and u.dtype == torch.float32
    assert (u >= 0).all() and (u <= 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01
    # each row is the row of its key alone
    for r in range(4):
        assert torch.equal(u[r], hash_uniform(keys[r:r + 1], 5, 10000)[0])


def test_mask_is_positional_prefix():
    # element i's mask depends only on (seed, step, salt, i): a one-bag block padded with more rows
    # gets the same mask on its first rows — what the stacked trainer relies on.
    d = keyed(p=0.3, seed=9, step=4)
    small = mask_of(d, (5, 16))
    big = mask_of(d, (40, 16))
    assert torch.equal(big[:5], small)


def test_stacked_key_gives_each_block_its_own_mask():
    k, rows, dim, p = 4, 7, 12, 0.4
    keys = torch.tensor([[3, 0], [3, 5], [17, 2], [100_003, 999]], dtype=torch.int64)
    x = torch.randn(k * rows, dim)
    d = KeyedDropout(p, salt=2).train()
    d.keyed = True
    d.key = keys
    out = d(x)
    for j in range(k):
        alone = keyed(p=p, salt=2, seed=int(keys[j, 0]), step=int(keys[j, 1]))
        assert torch.equal(out[j * rows:(j + 1) * rows], alone(x[j * rows:(j + 1) * rows])), j
    # and the blocks really differ from one another
    masks = (out != 0).view(k, rows, dim)
    assert not torch.equal(masks[0], masks[1])


def test_eval_and_p0_are_identity():
    x = torch.randn(50, 20)
    d = keyed(p=0.5, seed=1, step=1).eval()
    assert torch.equal(d(x), x)
    d0 = keyed(p=0.0, seed=1, step=1)
    assert torch.equal(d0(x), x)
    # unkeyed, eval: identity too
    assert torch.equal(KeyedDropout(0.5).eval()(x), x)


def test_unkeyed_behaves_like_torch_dropout():
    x = torch.randn(100, 30)
    d = KeyedDropout(0.3).train()
    assert not d.keyed
    torch.manual_seed(0)
    a = d(x)
    torch.manual_seed(0)
    b = torch.nn.functional.dropout(x, 0.3, True)
    assert torch.equal(a, b)


def test_invalid_p_and_repr():
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            KeyedDropout(p)
    assert "p=0.25" in repr(KeyedDropout(0.25, salt=3)) and "salt=3" in repr(KeyedDropout(0.25, salt=3))


def test_set_dropout_key_reaches_every_layer():
    model = build("gated")
    set_dropout_key(model, 12, 34)
    layers = [m for m in model.modules() if isinstance(m, KeyedDropout)]
    assert len(layers) == 3
    assert all(m.keyed and m.key.tolist() == [12, 34] for m in layers)
    # the key is not saved with the weights
    assert not any(k.endswith(".key") for k in model.state_dict())
    # the layers differ by salt, so they draw different masks for the same key
    x = torch.ones(8, 64)
    masks = [m.train()(x) != 0 for m in layers]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


@pytest.mark.parametrize("key", ["instance-max", "embedding-max", "mi-net-ds", "mi-net-rc"])
def test_baselines_start_as_keras_dense_layers(key):
    """Wang et al.'s Keras baselines: Glorot-uniform kernels, zero biases (not torch's default init)."""
    import math

    torch.manual_seed(0)
    model = benchmark_model(key, 166)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for m in linears:
        bound = math.sqrt(6.0 / (m.in_features + m.out_features))
        assert m.weight.abs().max().item() <= bound
        assert m.weight.abs().max().item() > 0.9 * bound  # uniform over the whole Glorot range
        assert torch.count_nonzero(m.bias) == 0
