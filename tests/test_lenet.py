"""The LeNet-5 instance encoder of the MNIST-bags experiments: shapes, size, gradients, and packed-bag models."""
from __future__ import annotations

import pytest
import torch

from abmil.data.bags import pack
from abmil.nn.lenet import LeNetEncoder
from abmil.nn.models import EmbeddingMIL, InstanceMIL
from abmil.nn.pooling import make_pool


def test_shapes_and_parameter_count():
    torch.manual_seed(0)
    enc = LeNetEncoder()
    h = enc(torch.randn(7, 1, 28, 28))
    assert h.shape == (7, 500) and enc.out_dim == 500
    assert bool((h >= 0).all())  # ends in a ReLU
    # conv 1->20 5x5, conv 20->50 5x5, fc 800->500 (the reference model.py)
    assert sum(p.numel() for p in enc.parameters()) == (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500)
    assert [type(m).__name__ for m in enc.modules() if "Dropout" in type(m).__name__] == []


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 3, 28, 28), (3, 1, 32, 32)])
def test_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match=r"\(n_instances, 1, 28, 28\)"):
        LeNetEncoder()(torch.randn(*shape))


@pytest.mark.parametrize("kind", ["attention", "gated", "instance-max"])
def test_mil_model_gradients_and_packing(kind):
    torch.manual_seed(0)
    model = (InstanceMIL(LeNetEncoder(), "max") if kind == "instance-max"
             else EmbeddingMIL(LeNetEncoder(), make_pool(kind, 500, att_dim=128)))
    bags = [torch.randn(n, 1, 28, 28) for n in (3, 1, 5)]
    x, bag_index = pack(bags)
    out = model(x, bag_index, 3)
    assert out.prob.shape == (3,)
    # a batch of bags gives what each bag gives alone
    alone = torch.cat([model(b, torch.zeros(len(b), dtype=torch.long), 1).prob for b in bags])
    torch.testing.assert_close(out.prob, alone, rtol=1e-5, atol=1e-6)
    torch.nn.functional.binary_cross_entropy(out.prob, torch.tensor([1.0, 0.0, 1.0])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.encoder.features[0].weight.grad.abs().sum() > 0
