"""Model registry: autoprune's own small networks, ``tv:NAME`` and ``package.module:callable``.

Example:
    >>> from autoprune.models import create_model, check_model_input
    >>> model = create_model("resnet20", in_channels=3, num_classes=10, image_size=(32, 32))
    >>> check_model_input(model, 3, (32, 32), name="resnet20")

A new own model is one file in this package with a builder decorated by
:func:`register_model`, imported below; the shared tests pick it up from :func:`list_models`.
"""

from __future__ import annotations

from autoprune.models._registry import (
    ModelInfo,
    NativeInput,
    check_model_input,
    create_model,
    describe_models,
    list_models,
    native_input,
    register_model,
)
from autoprune.models._torchvision_models import list_torchvision_models, replace_first_conv

# Importing an entry's module registers it.
from autoprune.models import digits_cnn, lenet, resnet_cifar, vgg_cifar  # noqa: E402,F401  isort: skip

__all__ = [
    "ModelInfo",
    "NativeInput",
    "check_model_input",
    "create_model",
    "describe_models",
    "list_models",
    "list_torchvision_models",
    "native_input",
    "register_model",
    "replace_first_conv",
]
