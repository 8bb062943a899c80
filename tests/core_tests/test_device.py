"""Channel blocks for ``--channel-multiple auto`` and the parsing of the option."""

from __future__ import annotations

import pytest
import torch

from autoprune.device import channel_block, parse_channel_multiple, resolve_channel_multiple
from autoprune.errors import UserError


@pytest.mark.parametrize(("capability", "block"), [("AVX512", 16), ("AVX2", 8), ("DEFAULT", 1), ("SVE256", 1)])
def test_cpu_channel_block_follows_the_vector_width(monkeypatch, capability, block):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert channel_block(torch.device("cpu")) == block
    assert channel_block(torch.device("cpu"), "bf16") == block
    assert resolve_channel_multiple("auto", torch.device("cpu")) == block
    assert resolve_channel_multiple(None, torch.device("cpu")) == block
    assert resolve_channel_multiple("3", torch.device("cpu")) == 3  # given: taken as it is


def test_cuda_channel_block_is_the_tensor_core_multiple():
    assert channel_block(torch.device("cuda")) == 8  # a device object needs no GPU


@pytest.mark.parametrize("value", ["auto", None, 1, 16, "8", " 4 "])
def test_good_channel_multiples(value):
    expected = value if value in ("auto", None) else int(value)
    assert parse_channel_multiple(value) == expected


@pytest.mark.parametrize("value", [0, -8, "0", "2.5", "fast", "", True, 2.0])
def test_bad_channel_multiples_name_the_option(value):
    with pytest.raises(UserError, match=r"--channel-multiple must be a positive integer or 'auto'"):
        parse_channel_multiple(value)
