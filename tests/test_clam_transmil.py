"""CLAM-SB and TransMIL against torchmil's (Apache-2.0, a test-only dependency): torchmil's weights copied into our
modules, outputs equal to 1e-6 in float64 — bag logits, attention, CLAM's instance loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abmil.nn.clam import ClamSB
from abmil.nn.encoders import MLPEncoder
from abmil.nn.transmil import TransMIL

torchmil = pytest.importorskip("torchmil")
from torchmil.models import CLAM_SB as TorchmilCLAM  # noqa: E402
from torchmil.models import TransMIL as TorchmilTransMIL  # noqa: E402

IN_DIM, DIM, TOL = 12, 16, 1e-6


def _feat_ext(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(IN_DIM, DIM), torch.nn.ReLU())  # float: torchmil probes it


def _encoder_from(feat_ext: torch.nn.Sequential) -> MLPEncoder:
    enc = MLPEncoder(IN_DIM, (DIM,)).double()
    enc.load_state_dict({"layers.0.weight": feat_ext[0].weight.double(), "layers.0.bias": feat_ext[0].bias.double()})
    return enc


class _CrossEntropy(torch.nn.Module):
    """CLAM's default instance loss in torchmil's call convention (targets (2k, 1) float)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets[:, 0].long())


def _clam_pair(seed: int = 0, att_dim: int = 8, k: int = 3) -> tuple[TorchmilCLAM, ClamSB]:
    ref = TorchmilCLAM(in_shape=(IN_DIM,), att_dim=att_dim, k_sample=k, gated=True, feat_ext=_feat_ext(seed)).double()
    ours = ClamSB(_encoder_from(ref.feat_ext), att_dim, n_out=1, k_sample=k).double()
    with torch.no_grad():
        ours.pool.V.load_state_dict(ref.pool.fc1.module.state_dict())
        ours.pool.U.load_state_dict(ref.pool.fc_gated.module.state_dict())
        ours.pool.w.weight.copy_(ref.pool.fc2.weight)
        ours.pool.w.bias.zero_()  # torchmil's attention output has no bias
        ours.classifier.load_state_dict(ref.classifier.module.state_dict())  # torchmil's LazyLinear wraps a Linear
        for mine, theirs in zip(ours.instance_classifiers, ref.inst_classifiers):
            mine.load_state_dict(theirs.module.state_dict())
    # CLAM's default instance loss, cross-entropy (torchmil 1.0.2's SmoothTop1SVM broadcasts its (2k, 1) targets)
    ref.inst_loss_fn = _CrossEntropy()
    return ref.eval(), ours


@pytest.mark.parametrize("n", [5, 40])
def test_clam_sb_equals_torchmil(n):
    ref, ours = _clam_pair()
    torch.manual_seed(1)
    x = torch.randn(n, IN_DIM, dtype=torch.float64)
    logit, att, emb = ref(x[None], return_att=True, return_emb=True)
    out = ours.eval()(x)
    assert (out.logits[:, 0] - logit).abs().max() < TOL
    assert (out.weights - torch.softmax(att[0], 0)).abs().max() < TOL
    ours.train()
    trained = ours(x)
    assert (trained.logits[:, 0] - logit).abs().max() < TOL
    assert (trained.attention_logits - att[0]).abs().max() < TOL
    # the instance loss of a bag were its label c: torchmil's in-class term with classifier c (CLAM, binary)
    for c in (0, 1):
        want, _, _ = ref.inst_eval(att[0], emb[0], ref.inst_classifiers[c])
        assert abs(float(trained.aux_loss[0, c]) / (1 - ours.bag_weight) - float(want)) < TOL
    # with the out-of-class term (CLAM's subtyping): torchmil's compute_inst_loss sums in + out, CLAM divides by the
    # number of classes
    ours.subtyping = True
    sub = ours(x)
    for c in (0, 1):
        want = ref.compute_inst_loss(att, emb, torch.tensor([c]))
        assert abs(float(sub.aux_loss[0, c]) / (1 - ours.bag_weight) * 2 - float(want)) < TOL


def test_clam_sb_packed_bags_equal_bags_alone_and_loss_adds_the_label_term():
    from abmil.train.loss import bag_losses

    _, ours = _clam_pair()
    torch.manual_seed(2)
    bags = [torch.randn(n, IN_DIM, dtype=torch.float64) for n in (4, 11, 7)]
    x, bag_index = torch.cat(bags), torch.repeat_interleave(torch.tensor([4, 11, 7]))
    ours.train()
    packed = ours(x, bag_index, 3)
    alone = [ours(b) for b in bags]
    assert torch.allclose(packed.logits, torch.cat([o.logits for o in alone]), atol=1e-12)
    assert torch.allclose(packed.aux_loss, torch.cat([o.aux_loss for o in alone]), atol=1e-12)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    plain = bag_losses(packed._replace(aux_loss=None, bag_weight=1.0), y)
    assert torch.allclose(bag_losses(packed, y), 0.7 * plain + packed.aux_loss[[0, 1, 2], [1, 0, 1]])


def _transmil_pair(seed: int = 0, heads: int = 4, landmarks: int = 8) -> tuple[TorchmilTransMIL, TransMIL]:
    ref = TorchmilTransMIL(in_shape=(IN_DIM,), att_dim=DIM, n_heads=heads, n_landmarks=landmarks,
                           feat_ext=_feat_ext(seed)).double().eval()
    ours = TransMIL(_encoder_from(ref.feat_ext), n_out=1, heads=heads, landmarks=landmarks).double().eval()
    with torch.no_grad():
        ours.cls_token.copy_(ref.cls_token[0])
        for mine, theirs in ((ours.layer1, ref.layers[0]), (ours.layer2, ref.layers[1])):
            mine.norm.load_state_dict(theirs.norm1.state_dict())
            mine.attention.qkv.load_state_dict(theirs.att_module.qkv_nn.state_dict())
        for mine, theirs in ((ours.ppeg.proj7, ref.pos_layer.proj), (ours.ppeg.proj5, ref.pos_layer.proj1),
                             (ours.ppeg.proj3, ref.pos_layer.proj2)):
            mine.load_state_dict(theirs.state_dict())
        ours.norm.load_state_dict(ref.norm.state_dict())
        ours.classifier.load_state_dict(ref.classifier.state_dict())
    return ref, ours


@pytest.mark.parametrize("n", [1, 7, 30, 50])
def test_transmil_equals_torchmil(n):
    ref, ours = _transmil_pair()
    torch.manual_seed(3)
    x = torch.randn(n, IN_DIM, dtype=torch.float64)
    with torch.no_grad():
        logit, att = ref(x[None], return_att=True)
        out = ours(x)
    assert (out.logits[:, 0] - logit).abs().max() < TOL
    assert (out.weights - att[0]).abs().max() < TOL


def test_transmil_packed_bags_are_forwarded_one_by_one():
    _, ours = _transmil_pair()
    torch.manual_seed(4)
    bags = [torch.randn(n, IN_DIM, dtype=torch.float64) for n in (3, 9)]
    with torch.no_grad():
        packed = ours(torch.cat(bags), torch.repeat_interleave(torch.tensor([3, 9])), 2)
        alone = [ours(b) for b in bags]
    assert torch.equal(packed.logits, torch.cat([o.logits for o in alone]))
    assert torch.equal(packed.weights, torch.cat([o.weights for o in alone]))
