"""``digits-cnn``: a small VGG-style CNN for 8×8 images (scikit-learn digits).

Layer names are plain ``Sequential`` indices, as configs refer to them:

====================  =======================================
``features.0``        Conv2d(in, 32, 3×3) + ``features.1`` BN
``features.3``        Conv2d(32, 64, 3×3) + ``features.4`` BN
``features.6``        MaxPool2d(2)
``features.7``        Conv2d(64, 128, 3×3) + ``features.8`` BN
``features.10``       Conv2d(128, 128, 3×3) + ``features.11`` BN
``features.13``       MaxPool2d(2)
``classifier.1``      Linear(128·⌊H/4⌋·⌊W/4⌋, 128)
``classifier.4``      Linear(128, num_classes)
====================  =======================================

The widths are large enough that pruning changes CPU latency measurably at batch 256.
"""

from __future__ import annotations

from torch import nn

from autoprune.errors import UserError
from autoprune.models._registry import register_model


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class DigitsCNN(nn.Module):
    """Four 3×3 conv + BN + ReLU layers (32, 64, 128, 128), two max-pools, two linear layers."""

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = image_size
        if h < 4 or w < 4:
            raise UserError(
                f"model 'digits-cnn' needs images of at least 4×4; got {h}×{w}. "
                "Use a dataset with larger images or another model."
            )
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            *_conv_bn_relu(128, 128),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * (h // 4) * (w // 4), 128),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(128, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # noqa: D102
        return self.classifier(self.features(x))


@register_model(
    "digits-cnn",
    description="VGG-style CNN, 4 convs 32-64-128-128 + BN, for 8×8 images (sklearn digits); any size ≥ 4×4.",
)
def digits_cnn(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    return DigitsCNN(in_channels, num_classes, image_size)
