"""ResNet-50 in plain PyTorch with torchvision's parameter names, so torchvision's and timm's ImageNet checkpoints
(``resnet50.tv_in1k``) load as they are; no torchvision needed. :class:`TruncatedResNet` is CLAM's
``resnet50_trunc_baseline``: the stem and ``layer1``-``layer3``, then a global mean over the (n, 1024, h, w) map."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (stride on the 3x3 convolution, "ResNet v1.5")."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _layer(in_ch: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_ch, width, stride)]
    layers += [Bottleneck(width * Bottleneck.expansion, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class TruncatedResNet(nn.Module):
    """ResNet-50 up to ``layer3`` and a spatial mean: images (n, 3, H, W) → features (n, 1024).

    ``blocks``: the bottlenecks per stage (ResNet-50: 3, 4, 6); ``width``: the first stage's width (64)."""

    def __init__(self, blocks: tuple[int, int, int] = (3, 4, 6), width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        e = Bottleneck.expansion
        self.layer1 = _layer(width, width, blocks[0], 1)
        self.layer2 = _layer(width * e, width * 2, blocks[1], 2)
        self.layer3 = _layer(width * 2 * e, width * 4, blocks[2], 2)
        self.dim = width * 4 * e

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(x.mean(dim=(2, 3)), 1)
