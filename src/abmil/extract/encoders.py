"""Patch encoders by name: the architecture, its weights and its own preprocessing.

Each :class:`EncoderSpec` says how its model card prepares a tile (resize, centre crop, mean and std) and where its
weights are: a Hugging Face hub repository (gated ones need the user's token: ``huggingface-cli login`` or
``HF_TOKEN``; files are cached by the hub client), ``--weights FILE`` (safetensors, or a state dict read with
``torch.load(weights_only=True)``) for offline use, or ``--weights none``: random weights from seed 0 (tests, speed
trials). The built-in architectures are plain PyTorch (:mod:`.resnet`, :mod:`.vit`) with torchvision's / timm's
parameter names, so the published checkpoints load without torchvision; ``timm:NAME`` builds any timm model
through timm where timm imports (it needs a torchvision built for the installed torch).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclass(frozen=True)
class Preprocess:
    """A tile (H, W, 3) uint8 → (3, crop, crop) float32: resized (PIL, ``interpolation``) so its side is
    ``resize``, centre-cropped to ``crop``, scaled to [0, 1] and normalised by ``mean`` / ``std``, as the model
    cards' torchvision transforms do on PIL images."""

    resize: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, tile: np.ndarray) -> Tensor:
        from PIL import Image

        if tile.shape[0] != self.resize or tile.shape[1] != self.resize:
            resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[self.interpolation]
            tile = np.asarray(Image.fromarray(tile).resize((self.resize, self.resize), resample))
        if self.crop != self.resize:
            top = (self.resize - self.crop) // 2
            tile = tile[top:top + self.crop, top:top + self.crop]
        x = torch.from_numpy(np.require(tile, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class EncoderSpec:
    """A named patch encoder. ``build`` makes the model with random weights; ``adapt`` maps a checkpoint's state
    dict onto it (drops heads, strips prefixes); ``repo`` / ``filename``: its weights on the Hugging Face hub."""

    name: str
    build: Callable[[], nn.Module]
    dim: int
    preprocess: Preprocess
    licence: str
    repo: str | None = None
    filename: str = "pytorch_model.bin"
    adapt: Callable[[dict], dict] = field(default=lambda state: state)
    reference: str = ""


def _strip(state: dict, drop: tuple[str, ...] = ()) -> dict:
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith(drop):
            out[key] = value
    return out


def _resnet() -> nn.Module:
    from .resnet import TruncatedResNet

    return TruncatedResNet()


def _vit(**kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from .vit import VisionTransformer

        return VisionTransformer(**kw)
    return build


_VIT_L = dict(patch_size=16, dim=1024, depth=24, heads=16, mlp_ratio=4.0, init_values=1e-5)
_VIT_G = dict(patch_size=14, dim=1536, depth=40, heads=24, mlp_ratio=5.33334, swiglu=True, init_values=1e-5)
_NC_ND = "CC-BY-NC-ND-4.0 (gated)"

ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    EncoderSpec("resnet50-trunc", _resnet, 1024, Preprocess(), "BSD-3-Clause (torchvision weights)",
                "timm/resnet50.tv_in1k", "model.safetensors",
                lambda state: _strip(state, ("layer4.", "fc.")),
                "CLAM's ImageNet ResNet-50 after layer3, mean-pooled"),
    EncoderSpec("uni", _vit(**_VIT_L), 1024, Preprocess(), _NC_ND, "MahmoodLab/UNI",
                adapt=_strip, reference="Chen et al. 2024, ViT-L/16, DINOv2 on 100M tiles"),
    EncoderSpec("uni2-h", _vit(patch_size=14, dim=1536, depth=24, heads=24, mlp_ratio=5.33334, swiglu=True,
                               init_values=1e-5, reg_tokens=8, no_embed_class=True), 1536, Preprocess(),
                _NC_ND, "MahmoodLab/UNI2-h", adapt=_strip, reference="ViT-H/14 with 8 registers, SwiGLU"),
    EncoderSpec("virchow2", _vit(patch_size=14, dim=1280, depth=32, heads=16, mlp_ratio=5.3375, swiglu=True,
                                 init_values=1e-5, reg_tokens=4, pool="token+mean"), 2560,
                Preprocess(interpolation="bicubic"), _NC_ND, "paige-ai/Virchow2", adapt=_strip,
                reference="Zimmermann et al. 2024, ViT-H/14; class token beside the mean patch token"),
    EncoderSpec("h-optimus-0", _vit(**_VIT_G, reg_tokens=4, no_embed_class=True), 1536,
                Preprocess(mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD), "Apache-2.0", "bioptimus/H-optimus-0",
                adapt=_strip, reference="Bioptimus 2024, ViT-g/14 with 4 registers"),
    EncoderSpec("h-optimus-1", _vit(**_VIT_G, reg_tokens=4, no_embed_class=True), 1536,
                Preprocess(mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD), "non-commercial (gated; see its card)",
                "bioptimus/H-optimus-1", adapt=_strip, reference="Bioptimus 2025, ViT-g/14 with 4 registers"),
    EncoderSpec("prov-gigapath", _vit(**{**_VIT_G, "patch_size": 16}), 1536,
                Preprocess(resize=256, crop=224, interpolation="bicubic"), "Apache-2.0 (gated)",
                "prov-gigapath/prov-gigapath", adapt=_strip, reference="Xu et al. 2024, the tile encoder, ViT-g"),
)}


@dataclass
class Encoder:
    """A ready encoder: ``model`` (eval mode) maps (n, 3, s, s) → (n, ``dim``); ``weights``: where its
    weights came from (recorded in every feature file and in the resume key)."""

    name: str
    model: nn.Module
    dim: int
    preprocess: Preprocess
    weights: str


def sha256_of(path: str | os.PathLike, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict:
    """A checkpoint's tensors: safetensors, else ``torch.load(weights_only=True)`` (never arbitrary unpickling);
    a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is opened."""
    path = Path(path)
    if not path.is_file():
        raise DataError("weights file not found (--weights)", path=str(path))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: pickle, zip and safetensors errors alike
        raise DataError(f"not a readable weights file ({type(e).__name__}: {e})", path=str(path)) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise DataError(f"expected a state dict of tensors, got {type(state).__name__}", path=str(path))
    return state


def load_encoder(name: str, weights: str | None = None) -> Encoder:
    """The encoder ``name`` with ``weights``: a file, ``"none"`` (random, seed 0) or None (its hub repository)."""
    if name.startswith("timm:"):
        return _timm_encoder(name[5:], weights)
    spec = ENCODERS.get(name)
    if spec is None:
        raise ValueError(f"--encoder: unknown encoder {name!r}: expected one of {', '.join(ENCODERS)} or timm:NAME")
    if weights is not None and weights != "none" and not Path(weights).is_file():
        raise DataError("weights file not found (--weights)", path=str(weights))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.build()
    if weights == "none":
        source = "none (random, seed 0)"
    else:
        path = Path(weights) if weights is not None else _hub_file(spec)
        state = spec.adapt(read_state_dict(path))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of the wrong shape: another architecture's checkpoint
            raise DataError(f"does not fit --encoder {name}: {str(e).splitlines()[-1].strip()}",
                            path=str(path)) from None
        if result.missing_keys or result.unexpected_keys:
            raise DataError(f"does not fit --encoder {name}: missing {_few(result.missing_keys)}, unexpected "
                            f"{_few(result.unexpected_keys)}", path=str(path))
        source = f"{spec.repo}/{spec.filename}" if weights is None else f"{path.name} sha256:{sha256_of(path)[:16]}"
    return Encoder(name, model.eval(), spec.dim, spec.preprocess, source)


def _few(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:3]) + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")


def _hub_file(spec: EncoderSpec) -> Path:
    from ..errors import optional_import

    hf_hub_download = optional_import("huggingface_hub", "extract",
                                      f"--encoder {spec.name}: downloading its weights (or give --weights FILE, "
                                      "offline, or --weights none)").hf_hub_download
    try:
        return Path(hf_hub_download(spec.repo, spec.filename))
    except Exception as e:  # gated without a token, offline, no such file: the hub client's message says which
        raise ValueError(f"--encoder {spec.name}: cannot fetch {spec.repo}/{spec.filename} from the Hugging Face "
                         f"hub ({type(e).__name__}: {e}); log in (huggingface-cli login) after accepting its "
                         f"terms, or give --weights FILE") from None


def _timm_encoder(name: str, weights: str | None) -> Encoder:
    try:
        import timm
        from timm.data import resolve_data_config
    except Exception as e:  # ImportError, or torchvision's operators missing from this torch build
        raise ValueError(f"--encoder timm:{name}: timm does not import here ({type(e).__name__}: {e}); it needs a "
                         f"torchvision built for this torch") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=weights is None, num_classes=0)
    if weights not in (None, "none"):
        model.load_state_dict(_strip(read_state_dict(weights)), strict=False)
    cfg = resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    resize = int(round(size / cfg.get("crop_pct", 1.0)))
    pre = Preprocess(resize, size, tuple(cfg["mean"]), tuple(cfg["std"]),
                     "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear")
    source = "none (random, seed 0)" if weights == "none" else (weights or f"timm:{name} pretrained")
    return Encoder(f"timm:{name}", model.eval(), int(model.num_features), pre, source)
