"""Import torchvision, also where its wheel was built for CUDA but torch is CPU-only.

The package registry's torchvision 0.28.0 wheel is a CUDA build. On a CPU build of
torch its C++ extension cannot load, and ``import torchvision`` then fails while
registering fake kernels for ``torchvision::nms`` / ``torchvision::qnms`` (the ops were
never defined). When, and only when, that exact failure happens, we define the two
op schemas and import again. Models, datasets and transforms then work; torchvision's
own C++ ops (nms, roi_align) stay unavailable, and autoprune uses none of them.
A matching CUDA install never reaches the workaround.
"""

from __future__ import annotations

import sys
from types import ModuleType

_fragment = None  # keeps the schema definitions alive


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, applying the CPU workaround if needed."""
    global _fragment
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _fragment is not None:
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _fragment = torch.library.Library("torchvision", "FRAGMENT")
        _fragment.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _fragment.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision
