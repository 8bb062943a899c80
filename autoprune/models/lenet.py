"""``lenet5``: LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling.

Both 5×5 convs use padding 2, so each keeps the map size and only the two 2×2 pools shrink
it: 8×8 → 4×4 → 2×2, 32×32 → 16×16 → 8×8. Any image of at least 4×4 works.

Layer names: ``features.0`` Conv2d(in, 6), ``features.3`` Conv2d(6, 16),
``classifier.1`` Linear(16·⌊H/4⌋·⌊W/4⌋, 120), ``classifier.3`` Linear(120, 84),
``classifier.5`` Linear(84, num_classes).
"""

from __future__ import annotations

from torch import nn

from autoprune.errors import UserError
from autoprune.models._registry import register_model


class LeNet5(nn.Module):
    """conv 6@5×5 → pool → conv 16@5×5 → pool → fc 120 → fc 84 → fc classes."""

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = image_size
        if h < 4 or w < 4:
            raise UserError(
                f"model 'lenet5' needs images of at least 4×4; got {h}×{w}. "
                "Use a dataset with larger images or another model."
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * (h // 4) * (w // 4), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):  # noqa: D102
        return self.classifier(self.features(x))


@register_model("lenet5", description="LeNet-5 (6-16 convs 5×5, fc 120-84), padded for small images; any size ≥ 4×4.")
def lenet5(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    return LeNet5(in_channels, num_classes, image_size)
