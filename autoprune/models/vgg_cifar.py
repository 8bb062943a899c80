"""``vgg16-bn``: the CIFAR VGG-16 with batch norm; ``vgg16-bn-half``: the same at half width.

13 3×3 conv + BN + ReLU layers (64, 64, M, 128, 128, M, 256×3, M, 512×3, M, 512×3, M),
global average pooling and ``classifier`` = Linear(512, num_classes), the variant common in
CIFAR pruning papers. A max-pool that would shrink the map below 1×1 is left out, so small
images work (8×8 keeps the first three pools); the ``features`` indices therefore depend on
the image size. At 32×32 the convs are ``features.0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40``.
"""

from __future__ import annotations

from torch import nn

from autoprune.models._registry import register_model

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    """VGG with BN for small images: ``features``, ``avgpool``, ``classifier``."""

    def __init__(
        self, cfg: list[int | str], in_channels: int, num_classes: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        h, w = image_size
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                if min(h, w) >= 2:  # a pool on a 1-pixel side would leave nothing
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            assert isinstance(v, int)
            layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            c_in = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # noqa: D102
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


@register_model(
    "vgg16-bn",
    description="CIFAR VGG-16 with BN (13 convs, Linear(512, classes)); pools adapt to the image size.",
)
def vgg16_bn(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    return CifarVGG(VGG16_CFG, in_channels, num_classes, image_size)


VGG16_HALF_CFG: list[int | str] = [c // 2 if isinstance(c, int) else c for c in VGG16_CFG]


@register_model(
    "vgg16-bn-half",
    description="VGG-16 with BN at half width (32–256 channels, about a quarter of vgg16-bn's MACs); pools adapt.",
)
def vgg16_bn_half(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    return CifarVGG(VGG16_HALF_CFG, in_channels, num_classes, image_size)
