"""``tv:NAME``: every torchvision classification model, untrained, adapted to the data.

torchvision is imported lazily through :func:`autoprune._torchvision.import_torchvision`
(never directly: the wheel may be a CUDA build over a CPU torch).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from autoprune._torchvision import import_torchvision
from autoprune.errors import UnknownNameError, UserError

_PREFIX = "tv:"

# Extra keyword arguments some builders need to be built untrained and to return a plain tensor.
_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _tv() -> Any:
    return import_torchvision()


def list_torchvision_models() -> list[str]:
    """Return ``tv:NAME`` for every torchvision classification model, sorted.

    Detection, segmentation, video, optical-flow and quantized models are not listed.

    Example:
        >>> "tv:resnet18" in list_torchvision_models()
        True
    """
    tv = _tv()
    return [_PREFIX + n for n in sorted(tv.models.list_models(module=tv.models))]


# ImageNet inputs: 3×224×224, 1000 classes; these builders were designed for other sizes.
_NATIVE_SIZE: dict[str, int] = {"inception_v3": 299}
NATIVE_CHANNELS, NATIVE_SIZE, NATIVE_CLASSES = 3, 224, 1000


def torchvision_input(name: str) -> tuple[int, tuple[int, int], int]:
    """``(in_channels, (height, width), num_classes)`` that ``tv:NAME`` was designed for:
    ImageNet's 3×224×224 and 1000 classes (299×299 for inception_v3). Nothing is imported."""
    size = _NATIVE_SIZE.get(name[len(_PREFIX) :], NATIVE_SIZE)
    return NATIVE_CHANNELS, (size, size), NATIVE_CLASSES


def _size_kwargs(tv_name: str, image_size: tuple[int, int]) -> dict[str, Any]:
    """Builders whose architecture depends on the input size are told the size."""
    h, w = image_size
    if tv_name.startswith("vit_") and h == w:
        return {"image_size": h}
    if tv_name.startswith("maxvit_"):
        return {"input_size": (h, w)}
    return {}


def create_torchvision_model(
    name: str, *, in_channels: int, num_classes: int, image_size: tuple[int, int]
) -> nn.Module:
    """Build ``tv:NAME`` with ``weights=None`` and ``num_classes``; adapt the first conv to ``in_channels``.

    Raises:
        UserError: the name is not a torchvision classification model.
    """
    tv_name = name[len(_PREFIX) :]
    known = list_torchvision_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        similar = f" Similar: {', '.join(close)}." if close else ""
        raise UnknownNameError(
            f"unknown torchvision model '{name}'.{similar} "
            f"{len(known)} classification models are available (list_torchvision_models())."
        )
    tv = _tv()
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    kwargs.update(_EXTRA_KWARGS.get(tv_name, {}))
    kwargs.update(_size_kwargs(tv_name, image_size))
    model = tv.models.get_model(tv_name, **kwargs)
    if in_channels != 3:
        replace_first_conv(model, in_channels, model_name=name)
    return model


def replace_first_conv(model: nn.Module, in_channels: int, *, model_name: str = "model") -> nn.Conv2d:
    """Replace the first ``nn.Conv2d`` (in module order) by one that takes ``in_channels``.

    The new conv keeps every other setting (out channels, kernel, stride, padding, dilation,
    bias, padding mode, device, dtype) and is freshly initialised.

    Returns:
        The new conv.

    Raises:
        UserError: the model has no ``nn.Conv2d`` or its first conv is grouped.
    """
    for qualname, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            break
    else:
        raise UserError(f"model '{model_name}' has no Conv2d whose input channels could be set to {in_channels}.")
    if module.groups != 1:
        raise UserError(
            f"model '{model_name}' starts with a grouped conv ('{qualname}', groups={module.groups}); "
            f"it cannot be adapted to {in_channels} input channels. Use 3-channel data or another model."
        )
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        kernel_size=module.kernel_size,  # type: ignore[arg-type]
        stride=module.stride,  # type: ignore[arg-type]
        padding=module.padding,  # type: ignore[arg-type]
        dilation=module.dilation,  # type: ignore[arg-type]
        groups=1,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    parent_name, _, child_name = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new)
    return new
