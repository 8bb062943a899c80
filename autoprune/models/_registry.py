"""The model registry: own small networks, ``tv:NAME``, ``timm:NAME`` and ``package.module:callable``.

Four kinds of name reach :func:`create_model`:

- a registered name (``digits-cnn``, ``resnet20``, ...), filled by :func:`register_model`;
- ``tv:NAME``, any torchvision classification model, built untrained;
- ``timm:NAME``, any timm model, built untrained (timm is an optional extra);
- ``package.module:callable``, the user's own builder.

Every builder is called with the same keyword-only arguments
``in_channels``, ``num_classes`` and ``image_size`` and returns an untrained ``nn.Module``.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import UserError, unknown_name
from autoprune.models._timm_models import create_timm_model, timm_input
from autoprune.models._torchvision_models import (
    create_torchvision_model,
    list_torchvision_models,
    torchvision_input,
)
from autoprune.models._user import create_user_model

ModelBuilder = Callable[..., nn.Module]

TORCHVISION_PREFIX = "tv:"
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class NativeInput:
    """The input a model was designed for (see :func:`native_input`)."""

    in_channels: int
    image_size: tuple[int, int]
    num_classes: int

    def __str__(self) -> str:
        return f"{self.in_channels}×{self.image_size[0]}×{self.image_size[1]}"


@dataclass(frozen=True)
class ModelInfo:
    """One registered model.

    Attributes:
        name: The name users write, e.g. ``"resnet20"``.
        builder: ``builder(*, in_channels, num_classes, image_size) -> nn.Module``.
        description: One line shown by ``describe_models``.
    """

    name: str
    builder: ModelBuilder
    description: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, description: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a model builder under ``name`` (decorator).

    Args:
        name: The registry name. It may not contain ``':'`` (reserved for ``tv:NAME``,
            ``timm:NAME`` and ``package.module:callable``) and may not be registered twice.
        description: One line saying what the model is and what inputs it suits.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Example:
        >>> @register_model("tiny", description="one conv")  # doctest: +SKIP
        ... def tiny(*, in_channels, num_classes, image_size):
        ...     return nn.Sequential(nn.Conv2d(in_channels, num_classes, 1),
        ...                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    """
    if ":" in name:
        raise ValueError(f"model name {name!r} may not contain ':' (reserved for tv:NAME, timm:NAME and module:callable)")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelInfo(name=name, builder=builder, description=description)
        return builder

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Return the registered model names, sorted, optionally filtered by an fnmatch pattern.

    ``tv:NAME`` models are listed by :func:`list_torchvision_models`.

    Example:
        >>> list_models("resnet*")  # doctest: +SKIP
        ['resnet20', 'resnet56']
    """
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def describe_models() -> dict[str, str]:
    """Return ``{name: description}`` for the registered models, sorted by name."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def native_input(name: str) -> NativeInput | None:
    """The input ``name`` was designed for, where it has one: a torchvision model's ImageNet
    input (3×224×224, 1000 classes), a timm model's pretrained config (``input_size``,
    ``num_classes``); None for autoprune's own models and user models, which adapt to
    whatever dataset they are built for.

    Raises:
        UserError: a ``timm:NAME`` without timm installed, or not a timm model.

    Example:
        >>> str(native_input("tv:alexnet")), native_input("digits-cnn")
        ('3×224×224', None)
    """
    if not isinstance(name, str):
        return None
    if name.startswith(TORCHVISION_PREFIX):
        return NativeInput(*torchvision_input(name))
    if name.startswith(TIMM_PREFIX):
        return NativeInput(*timm_input(name))
    return None


def _check_positive_int(value: object, parameter: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(
            f"The '{parameter}' parameter of create_model must be a positive int. Got {value!r} instead."
        )


def _check_image_size(image_size: object) -> tuple[int, int]:
    ok = (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_size)
    )
    if not ok:
        raise UserError(
            "The 'image_size' parameter of create_model must be a pair of positive ints (height, width). "
            f"Got {image_size!r} instead."
        )
    return (int(image_size[0]), int(image_size[1]))  # type: ignore[index]


def create_model(name: str, *, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """Build an untrained model by name. No weights are downloaded and no forward pass is run.

    Args:
        name: A registered name (see :func:`list_models`), ``tv:NAME`` (see
            :func:`list_torchvision_models`), ``timm:NAME`` (see ``timm.list_models()``)
            or ``package.module:callable``.
        in_channels: Channels of the input images (1 for grey, 3 for RGB).
        num_classes: Outputs of the classifier.
        image_size: ``(height, width)`` of the input images.

    Returns:
        The model, in training mode. Use :func:`check_model_input` to check that it takes
        inputs of the given shape.

    Raises:
        UserError: unknown name, bad arguments, a user module that cannot be imported or a
            callable that does not return an ``nn.Module``.

    Example:
        >>> model = create_model("resnet20", in_channels=3, num_classes=10, image_size=(32, 32))
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"The 'name' parameter of create_model must be a non-empty string. Got {name!r} instead.")
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(num_classes, "num_classes")
    size = _check_image_size(image_size)

    if name.startswith(TORCHVISION_PREFIX):
        return create_torchvision_model(name, in_channels=in_channels, num_classes=num_classes, image_size=size)
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name, in_channels=in_channels, num_classes=num_classes, image_size=size)
    if ":" in name:
        return create_user_model(name, in_channels=in_channels, num_classes=num_classes, image_size=size)
    info = _REGISTRY.get(name)
    if info is None:
        raise _unknown_model(name)
    model = info.builder(in_channels=in_channels, num_classes=num_classes, image_size=size)
    if not isinstance(model, nn.Module):  # a bug in the registered builder, not the user's fault
        raise TypeError(f"builder of model {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _unknown_model(name: str) -> UserError:
    known = list_models()
    hint = "Use tv:NAME for a torchvision model, timm:NAME for a timm model or package.module:callable for your own."
    close = difflib.get_close_matches(name, known, n=3)
    try:
        if TORCHVISION_PREFIX + name in list_torchvision_models():
            close.insert(0, TORCHVISION_PREFIX + name)
    except Exception:  # torchvision broken: the hint is optional
        pass
    if close:
        hint = f"Did you mean {', '.join(repr(c) for c in close)}? " + hint
    return unknown_name("model", name, known, hint=hint)


def check_model_input(
    model: nn.Module,
    in_channels: int,
    image_size: tuple[int, int],
    *,
    name: str | None = None,
    num_classes: int | None = None,
) -> None:
    """Run one forward pass on a zero batch of 2 to check that ``model`` takes such inputs.

    The model is run in eval mode under ``torch.no_grad()`` on the device and dtype of its
    first parameter; its training mode is restored afterwards.

    Args:
        model: The model to check.
        in_channels: Channels of the inputs.
        image_size: ``(height, width)`` of the inputs.
        name: The model's name for the message (defaults to its class name).
        num_classes: If given, also check that the output has shape ``(2, num_classes)``.

    Raises:
        UserError: the forward pass fails on the shape, or the output has the wrong shape.
    """
    label = name if name is not None else type(model).__name__
    h, w = image_size
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(2, in_channels, h, w, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".!")
        native = native_input(name) if name is not None else None
        hint = "Use a dataset with larger images or another model."
        if native is not None:
            hint = (f"It takes {native} inputs natively: use a dataset with larger images (e.g. imagefolder:PATH) "
                    "or another model.")
        raise UserError(f"model '{label}' cannot take {in_channels}×{h}×{w} inputs: {reason}. {hint}") from exc
    finally:
        model.train(was_training)
    if num_classes is not None:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        if shape != (2, num_classes):
            got = shape if shape is not None else type(out).__name__
            raise UserError(
                f"model '{label}' returns {got} for a batch of 2 {in_channels}×{h}×{w} inputs; "
                f"expected a tensor of shape (2, {num_classes})."
            )
