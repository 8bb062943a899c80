"""Reading a ``model.pt2`` back runs no code from the file (issue 27).

``torch.export.load`` alone unpickles any payload a ``.pt2`` marks as pickled and parses its
shape expressions with ``sympy.sympify`` (``eval``): each crafted file below runs its payload
through plain ``torch.export.load`` (the control), and is refused by autoprune's loader with
the payload not run.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import autoprune
from autoprune.deploy import export_programs, load_program
from autoprune.safeload import UnsafeFileError


class _Payload:
    """Unpickling it creates a file (builtins only, as a stranger's file would be written)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:  # noqa: ANN001
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 64, 10)).eval()
    out = tmp_path_factory.mktemp("program")
    files = export_programs(model, torch.randn(2, 1, 8, 8), out)
    assert isinstance(files["pt2"], Path)
    return files["pt2"]


def _rewrite(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
    return dst


def _pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    return buf.getvalue()


def _pickled_weight(name: str, data: bytes, marker: Path) -> bytes:
    if name.endswith("model_weights_config.json"):
        config = json.loads(data)
        first = next(iter(config["config"]))
        config["config"][first]["use_pickle"] = True
        return json.dumps(config).encode()
    if name.endswith("weights/weight_0"):
        return _pickled(marker)
    return data


def _pickled_example(name: str, data: bytes, marker: Path) -> bytes:
    return _pickled(marker) if name.endswith("sample_inputs/model.pt") else data


def _evaluated_shape(name: str, data: bytes, marker: Path) -> bytes:
    if not name.endswith("models/model.json"):
        return data
    text = data.decode()
    code = f"__import__('pathlib').Path({str(marker)!r}).touch() or "
    crafted = re.sub(r"(Symbol\('s\d+', [^)]*\))", lambda m: code.replace('"', '\\"') + m.group(1), text)
    assert crafted != text  # the program has a dynamic batch dimension to craft
    return crafted.encode()


CRAFTS = {"a weight marked as pickled": _pickled_weight, "pickled example inputs": _pickled_example,
          "a shape expression that eval runs": _evaluated_shape}


@pytest.mark.parametrize("craft", list(CRAFTS))
def test_a_crafted_program_is_refused_and_its_payload_never_runs(program, tmp_path, craft) -> None:
    marker = tmp_path / "the-payload-ran"
    crafted = _rewrite(program, tmp_path / "model.pt2", lambda n, d: CRAFTS[craft](n, d, marker))
    with pytest.raises(UnsafeFileError) as refused:
        load_program(crafted)
    assert not marker.exists()
    assert "model.pt2" in str(refused.value) and "\n" not in str(refused.value)

    try:  # the control: torch's own loader runs it
        torch.export.load(str(crafted))
    except Exception:  # noqa: BLE001, S110 - it may fail after the payload ran
        pass
    assert marker.exists(), "the crafted file is not an attack on torch.export.load; the test proves nothing"


def test_a_save_pruned_folder_with_a_crafted_program_is_refused(program, tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)).eval()
    folder = autoprune.save_pruned(model, tmp_path / "out", example_inputs=torch.randn(2, 1, 8, 8))
    marker = tmp_path / "the-payload-ran"
    good = folder / "model.pt2"
    _rewrite(good.rename(tmp_path / "good.pt2"), good, lambda n, d: _pickled_weight(n, d, marker))
    with pytest.raises(autoprune.UserError, match="pickled object"):
        autoprune.load_pruned(folder)
    assert not marker.exists()
    rebuilt = autoprune.load_pruned(folder, model=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                                                 nn.Flatten(), nn.Linear(4 * 64, 10)))
    with torch.no_grad():  # the weights and the architecture do not depend on the program
        x = torch.randn(3, 1, 8, 8)
        assert torch.equal(rebuilt(x), model(x))


def test_a_program_that_calls_python_functions_is_refused(program) -> None:
    """The graph may call ATen operators and size arithmetic only: a node that calls anything
    else (here ``os.system``, reachable from torch as ``torch.os.system``) is refused."""
    import os

    from autoprune.deploy.programs import _check_graph

    ep = torch.export.load(str(program))
    _check_graph(ep, program)  # autoprune's own program passes
    node = next(n for n in ep.graph_module.graph.nodes if n.op == "call_function")
    node.target = os.system
    with pytest.raises(UnsafeFileError, match="calls system"):
        _check_graph(ep, program)


def test_the_loader_leaves_torch_and_pickle_as_they_were(program) -> None:
    import pickle

    import sympy

    before = (torch.load, pickle.load, pickle.loads, torch._C._pickle_load_obj, sympy.sympify)  # noqa: SLF001
    module = load_program(program)
    assert (torch.load, pickle.load, pickle.loads, torch._C._pickle_load_obj, sympy.sympify) == before  # noqa: SLF001
    with torch.no_grad():
        assert module(torch.randn(5, 1, 8, 8)).shape == (5, 10)
