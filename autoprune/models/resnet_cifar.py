"""``resnet20``, ``resnet56``: the CIFAR ResNets of He et al. (2016), section 4.2.

Three stages of ``n`` BasicBlocks with 16, 32, 64 channels (depth = 6n + 2), global average
pooling and ``fc`` = Linear(64, num_classes). Where a block changes the shape (first block of
stages 2 and 3), the shortcut is option B: a 1×1 strided conv + BN (``layer2.0.shortcut.0``),
not the zero-padding option A, so that channel-pruning tools see real convs on every path.

Module names: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv1/bn1/conv2/bn2``,
``layer{2,3}.0.shortcut.{0,1}``, ``fc``. resnet20 has 21 convs, resnet56 has 57.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from autoprune.models._registry import register_model


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN; identity shortcut, or 1×1 conv + BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):  # noqa: D102
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images."""

    def __init__(self, n: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, 16, n, stride=1)
        self.layer2 = self._make_stage(16, 32, n, stride=2)
        self.layer3 = self._make_stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):  # noqa: D102
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet20", description="CIFAR ResNet-20 (3×3 BasicBlocks, 16/32/64, option-B shortcuts).")
def resnet20(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    return CifarResNet(3, in_channels, num_classes)


@register_model("resnet56", description="CIFAR ResNet-56 (9×3 BasicBlocks, 16/32/64, option-B shortcuts).")
def resnet56(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    return CifarResNet(9, in_channels, num_classes)
