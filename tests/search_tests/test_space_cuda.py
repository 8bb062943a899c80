"""``auto_space`` on a CUDA device adds 2:4 where it fits: plain logic, checked on the CPU."""

from __future__ import annotations

import pytest
import torch

from autoprune.groups import ChannelGraph
from autoprune.models import create_model
from autoprune.sparsity import get_sparsity
from autoprune.study.space_file import auto_space


@pytest.mark.parametrize(("model", "channels", "size"), [("digits-cnn", 1, 8), ("lenet5", 1, 28)])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_auto_space_offers_2_4_on_cuda_where_it_fits(model: str, channels: int, size: int, device: str) -> None:
    net = create_model(model, in_channels=channels, num_classes=10, image_size=(size, size)).eval()
    graph = ChannelGraph(net, torch.zeros(1, channels, size, size))
    cpu = {v.name: v for v in auto_space(graph).variables}
    cuda = {v.name: v for v in auto_space(graph, device=device).variables}
    assert set(cuda) == set(cpu)  # the same layers, the same rates
    two_four = get_sparsity("2:4")
    fits = {name: all(two_four.applies_to(net.get_submodule(n).weight) is None for n in var.layers)
            for name, var in cuda.items()}
    for name, var in cuda.items():
        assert var.types == cpu[name].types + (["2:4"] if fits[name] else []), name
        assert var.rate == cpu[name].rate
    assert not any("2:4" in v.types for v in cpu.values())  # never on the CPU
    assert any(fits.values()) and not all(fits.values())  # both cases were seen
