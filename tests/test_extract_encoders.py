"""The built-in encoders against timm's own models: the same parameter names (a timm or torchvision checkpoint loads
with nothing missing or left over) and the same features.

timm imports torchvision at module level; the CPU torch build here cannot load the registry's torchvision (its C
extension links CUDA libraries), and ``pip install timm`` would replace torch to pair one. So timm is installed
alone (``pip install --no-deps timm``; the test skips without it) and, where no torchvision imports, imported over
placeholder ``torchvision`` modules: timm's model code (``VisionTransformer``, ``ResNet``) uses none of torchvision,
only its data and detection helpers do. The placeholders live in ``sys.modules`` for this module's tests only."""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from abmil.extract.encoders import ENCODERS, Preprocess, load_encoder
from abmil.extract.resnet import TruncatedResNet
from abmil.extract.vit import VisionTransformer

if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (pip install --no-deps timm)", allow_module_level=True)

TORCHVISION_MODULES = ("", ".ops", ".ops.misc", ".transforms", ".transforms.functional", ".transforms.v2",
                       ".datasets", ".models", ".models.feature_extraction", ".utils", ".io")


class _Placeholder(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _AbsentModule(types.ModuleType):
    """A torchvision module each of whose names is a placeholder class (timm's models never call them)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Placeholder(name, (), {"__module__": self.__name__})
        setattr(self, name, value)
        return value


@pytest.fixture(scope="module")
def timm():
    try:
        import torchvision  # noqa: F401  a working torchvision: timm as it is
    except Exception:
        saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
        for k in saved:
            del sys.modules[k]
        for suffix in TORCHVISION_MODULES:
            name = "torchvision" + suffix
            module = _AbsentModule(name)
            module.__path__ = []
            sys.modules[name] = module
            if suffix:
                parent, _, leaf = name.rpartition(".")
                setattr(sys.modules[parent], leaf, module)
        try:
            import timm
        except Exception as e:
            pytest.skip(f"timm does not import over placeholder torchvision modules ({e})")
        yield timm
        for suffix in TORCHVISION_MODULES:
            sys.modules.pop("torchvision" + suffix, None)
        sys.modules.update(saved)
        return
    import timm

    yield timm


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and batch-norm statistic drawn at random (so LayerScale, norms and biases all count)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("running_var") else 0.0))
                if name.endswith("running_var"):
                    t.abs_()
    return model.eval()


VIT_CASES = {  # ours (abmil.extract.vit) beside timm's VisionTransformer kwargs: the registered models' shapes, small
    "uni": (dict(mlp_ratio=4.0, init_values=1e-5), dict(mlp_ratio=4.0, init_values=1e-5)),
    "uni2-h": (dict(mlp_ratio=5.33334, swiglu=True, init_values=1e-5, reg_tokens=8, no_embed_class=True),
               dict(mlp_ratio=5.33334, init_values=1e-5, reg_tokens=8, no_embed_class=True, swiglu=True)),
    "virchow2": (dict(mlp_ratio=5.3375, swiglu=True, init_values=1e-5, reg_tokens=4, pool="token+mean"),
                 dict(mlp_ratio=5.3375, init_values=1e-5, reg_tokens=4, swiglu=True, global_pool="")),
}


@pytest.mark.parametrize("case", sorted(VIT_CASES))
def test_vit_matches_timm(timm, case):
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    ours_kw, timm_kw = VIT_CASES[case][0], dict(VIT_CASES[case][1])
    if timm_kw.pop("swiglu", False):
        timm_kw.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    shape = dict(img_size=56, patch_size=14, dim=48, depth=2, heads=4)
    reference = randomised(TimmViT(img_size=56, patch_size=14, embed_dim=48, depth=2, num_heads=4, num_classes=0,
                                   **timm_kw), seed=1)
    ours = VisionTransformer(**shape, **ours_kw).eval()
    ours.load_state_dict(ENCODERS[case].adapt(reference.state_dict()), strict=True)
    x = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        if ours.pool == "token+mean":  # Virchow2's card: the class token beside the mean of the patch tokens
            expected = torch.cat([expected[:, 0], expected[:, 1 + 4:].mean(1)], dim=1)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-5)


def test_resnet50_trunc_is_timm_resnet50_to_layer3(timm, tmp_path):
    from safetensors.torch import save_file

    reference = randomised(timm.create_model("resnet50", pretrained=False, num_classes=0), seed=3)
    save_file(reference.state_dict(), str(tmp_path / "resnet50.safetensors"))  # a whole ResNet-50 checkpoint
    encoder = load_encoder("resnet50-trunc", str(tmp_path / "resnet50.safetensors"))  # layer4 and fc dropped
    assert isinstance(encoder.model, TruncatedResNet) and encoder.dim == 1024
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        r = reference
        h = r.layer3(r.layer2(r.layer1(r.maxpool(r.act1(r.bn1(r.conv1(x)))))))
        torch.testing.assert_close(encoder.model(x), h.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def test_preprocess_is_resize_crop_normalise():
    from PIL import Image

    tile = (torch.arange(40 * 40 * 3) % 251).to(torch.uint8).reshape(40, 40, 3).numpy()
    pre = Preprocess(resize=32, crop=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    resized = torch.from_numpy(np.array(Image.fromarray(tile).resize((32, 32), Image.Resampling.BILINEAR)))
    expected = (resized[4:28, 4:28].permute(2, 0, 1).float() / 255 - torch.tensor([.5, .4, .3]).view(3, 1, 1)) \
        / torch.tensor([.2, .3, .4]).view(3, 1, 1)
    torch.testing.assert_close(pre(tile), expected)
