"""``timm:NAME``: any timm model, built untrained (``pretrained=False``), adapted to the data.

timm is an optional dependency (``pip install -e ".[timm]"``). It imports torchvision, so
it is imported only through :func:`import_timm`, after autoprune's torchvision workaround
(:func:`autoprune._torchvision.import_torchvision`) has run. No weights are ever
downloaded: a trained model comes in through ``--checkpoint``.

timm adapts its own models: ``in_chans`` sets the first conv's input channels and
``num_classes`` the classifier. The native input is the model's pretrained config
(``input_size``: 3×224×224 for most, 3×256×256 for some).
"""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any

from torch import nn

from autoprune._torchvision import import_torchvision
from autoprune.errors import UnknownNameError, UserError, first_line

PREFIX = "timm:"
INSTALL_HINT = ("install it with: pip install -e \".[timm]\" (or pip install --no-deps timm==1.0.31 huggingface_hub "
                "safetensors, keeping your torch)")
NATIVE_CLASSES = 1000


def import_timm() -> ModuleType:
    """The ``timm`` module, imported after the torchvision workaround.

    Raises:
        UserError: timm is not installed (the message says how to install it).
    """
    import_torchvision()
    try:
        import timm
    except ImportError as exc:
        if getattr(exc, "name", None) not in (None, "timm") and not str(exc).startswith("No module named 'timm'"):
            raise UserError(f"timm cannot be imported: {first_line(exc)}; {INSTALL_HINT}.") from None
        raise UserError(f"timm:NAME models need timm, which is not installed; {INSTALL_HINT}.") from None
    return timm


def timm_name(name: str) -> str:
    """``timm:resnet50.a1_in1k`` → ``resnet50.a1_in1k`` (what ``timm.create_model`` takes)."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def _check_known(timm: ModuleType, name: str) -> str:
    """The timm name of ``name``, or UnknownNameError with similar names."""
    arch = timm_name(name)
    if arch and timm.is_model(arch):
        return arch
    known = timm.list_models()
    base = arch.split(".", 1)[0]
    close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
    similar = f" Similar: {', '.join(PREFIX + c for c in close)}." if close else ""
    raise UnknownNameError(f"unknown timm model '{name}'.{similar} timm has {len(known)} models: "
                           f"timm.list_models() or timm.list_models('convnext*') lists them.")


def _pretrained_cfg(timm: ModuleType, arch: str) -> Any:  # noqa: ANN401 - timm's PretrainedCfg
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(arch)


def timm_input(name: str) -> tuple[int, tuple[int, int], int]:
    """``(in_channels, (height, width), num_classes)`` that ``timm:NAME`` was designed for: its
    pretrained config's ``input_size`` and classes (3×224×224 and 1000 where it has none).

    Raises:
        UserError: timm is missing or the name is unknown.
    """
    timm = import_timm()
    arch = _check_known(timm, name)
    cfg = _pretrained_cfg(timm, arch)
    c, h, w = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    classes = int(getattr(cfg, "num_classes", None) or NATIVE_CLASSES)
    return int(c), (int(h), int(w)), classes


def create_timm_model(name: str, *, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, in_chans=in_channels, num_classes=num_classes)``.

    Models whose architecture depends on the input size (``fixed_input_size`` in their
    pretrained config: ViTs and their kin) are also told ``img_size``.

    Raises:
        UserError: timm is missing, the name is unknown, or timm cannot build it so.
    """
    timm = import_timm()
    arch = _check_known(timm, name)
    kwargs: dict[str, Any] = {"pretrained": False, "in_chans": in_channels, "num_classes": num_classes}
    cfg = _pretrained_cfg(timm, arch)
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = tuple(image_size)
    try:
        return timm.create_model(arch, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise UserError(f"timm cannot build '{name}' for {in_channels}×{image_size[0]}×{image_size[1]} inputs and "
                        f"{num_classes} classes: {first_line(exc)}.") from None
