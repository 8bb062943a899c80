"""Norms over channels (LayerNorm, GroupNorm): the masked model computes what the compacted one will."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.admm import apply_masks
from autoprune.compact import remove_channels
from autoprune.config import LayerTarget
from autoprune.groups import ChannelGraph
from autoprune.norms import mask_statistics, plain_statistics, unmask_statistics
from autoprune.projection import Projector


class NormNet(nn.Module):
    """A channels-last LayerNorm (ConvNeXt's block), a GroupNorm of 4 groups and one with a
    channel per group, each after a conv whose filters are pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.norm = nn.LayerNorm(32, eps=1e-6)
        self.conv2 = nn.Conv2d(32, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.conv3 = nn.Conv2d(16, 24, 1)
        self.gn1 = nn.GroupNorm(24, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = F.gelu(self.gn(self.conv2(x)))
        x = F.gelu(self.gn1(self.conv3(x)))  # nonlinear: the mean below is not just gn1's bias
        return self.head(x.mean((2, 3)))


def _random_affine(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g)


def _pruned(rate: float = 0.5, model: nn.Module | None = None):  # noqa: ANN202
    torch.manual_seed(0)
    model = (model or NormNet()).eval()
    _random_affine(model)
    x = torch.randn(4, 3, 8, 8)
    graph = ChannelGraph(model, x[:1])
    targets = {n: LayerTarget("filter", rate) for n in ("conv1", "conv2", "conv3")}
    proj = Projector(model, graph, targets)
    apply_masks(model, proj.hard_masks())
    return model, proj, x


def test_compacted_norms_equal_the_masked_ones_and_are_plain_norms() -> None:
    masked, proj, x = _pruned()
    compact = remove_channels(masked, proj, x[:1])
    with torch.no_grad():
        ref, out = masked(x), compact(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert compact.norm.normalized_shape == (16,) and compact.norm.weight.shape == (16,)
    assert (compact.gn.num_groups, compact.gn.num_channels) == (4, 8)
    assert compact.gn1.num_groups == compact.gn1.num_channels == 12  # still one channel per group
    assert not any(m._forward_hooks for m in compact.modules())  # plain modules, nothing of autoprune left
    assert not any(n.startswith("autoprune") for n, _ in compact.named_buffers())


def test_without_statistics_over_the_kept_channels_the_masked_model_differs() -> None:
    """The control: zeroed channels counted in the LayerNorm's and GroupNorm's statistics
    (what a masked model computed before) give another function than the compacted model."""
    masked, proj, x = _pruned()
    compact = remove_channels(masked, proj, x[:1])
    assert set(unmask_statistics(masked)) == {"norm", "gn"}  # not gn1: one channel per group needs nothing
    with torch.no_grad():
        assert float((masked(x) - compact(x)).abs().max()) > 1e-2


def test_groupnorm_keeps_the_same_count_in_every_group() -> None:
    masked, proj, x = _pruned(rate=0.3)  # 30% of 16 channels: 11, rounded to 12 for 4 groups of 3
    gt = next(g for g in proj.group_targets.values() if "conv2" in g.by_out)
    assert gt.group.cells == 4
    kept = proj.kept_channels_[gt.group.index]
    assert kept.view(4, 4).sum(1).tolist() == [3, 3, 3, 3]
    compact = remove_channels(masked, proj, x[:1])
    assert (compact.gn.num_groups, compact.gn.num_channels) == (4, 12)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), masked(x), rtol=1e-5, atol=1e-5)


def test_masked_statistics_leave_the_state_dict_and_survive_a_copy() -> None:
    masked, proj, x = _pruned()
    plain = NormNet()
    assert masked.state_dict().keys() == plain.state_dict().keys()  # the kept channels are not saved
    twin = copy.deepcopy(masked)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), masked(x))
        exact = masked(x)
        with plain_statistics(masked):  # what tracing sees: the norms' own forward
            assert float((masked(x) - exact).abs().max()) > 1e-2
        torch.testing.assert_close(masked(x), exact)


def test_a_norm_that_keeps_every_channel_is_plain_again() -> None:
    masked, proj, _ = _pruned()
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in masked.named_parameters()}
    assert mask_statistics(masked, masks) == []
    assert not any(m._forward_hooks for m in masked.modules())


def test_training_the_masked_model_reaches_only_the_kept_norm_parameters() -> None:
    masked, proj, x = _pruned()
    masked.train()
    loss = masked(x).square().mean()
    loss.backward()
    gone = ~proj.hard_masks()["norm.weight"]
    assert float(masked.norm.weight.grad[gone].abs().max()) == 0.0
    assert float(masked.norm.weight.grad[~gone].abs().max()) > 0.0


class OwnLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class PlainLN(NormNet):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm


@pytest.mark.parametrize(("norm", "reason"), [
    (OwnLayerNorm(32), "a normalisation over channels (OwnLayerNorm) whose computation autoprune does not know"),
    (nn.LayerNorm(32, elementwise_affine=False), "a LayerNorm over channels without affine parameters"),
])
def test_a_norm_autoprune_cannot_make_exact_is_not_pruned(norm, reason) -> None:  # noqa: ANN001
    model = PlainLN(norm).eval()
    graph = ChannelGraph(model, torch.zeros(1, 3, 8, 8))
    group = graph.out_group("conv1")
    assert not group.prunable and f"'norm', {reason}" in group.reason
    assert graph.out_group("conv2").prunable  # the GroupNorm's group is not affected


# -- channels computed from channels of the same group (GhostNet) --------------------------


class Ghost(nn.Module):
    """GhostNet's module: ``cat([x1, depthwise(x1)])``, read by a depthwise conv over both halves."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.primary = nn.Conv2d(8, 8, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.cheap = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.bn1(self.primary(self.stem(x))))
        x2 = F.relu(self.bn2(self.cheap(x1)))
        y = self.dw(torch.cat([x1, x2], 1))
        return self.head(y.mean((2, 3)))


def test_ghost_channels_are_mapped_onto_the_conv_that_makes_them(randomize_bn) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = Ghost().eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 8, 8)
    graph = ChannelGraph(model, x[:1])
    group = graph.out_group("primary")
    assert group.prunable and (group.root, group.size) == ("primary", 8)
    assert graph.out_group("dw") is group  # the depthwise conv's 16 channels: two per root channel
    proj = Projector(model, graph, {"primary": LayerTarget("filter", 0.5)})
    apply_masks(model, proj.hard_masks())
    compact = remove_channels(model, proj, x[:1])
    assert compact.dw.out_channels == 8 and compact.primary.out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-5)


def test_tied_channels_that_cannot_be_mapped_are_not_pruned(monkeypatch) -> None:  # noqa: ANN001
    import autoprune.groups as groups

    monkeypatch.setattr(groups, "_generator_root", lambda *a: None)  # keep Torch-Pruning's own root
    graph = ChannelGraph(Ghost().eval(), torch.zeros(1, 3, 8, 8))
    group = graph.out_group("primary")
    assert not group.prunable and "tied to one another" in group.reason
