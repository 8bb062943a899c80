"""A refused command leaves nothing behind (issue 27): each bad input, run in an empty folder,
exits with status 2 and one line on stderr, and the folder is still empty afterwards (no
``runs/optuna.db``, no ``runs/``, no cached baseline, no output folder).

The inputs live in a folder of their own, outside the one the command runs in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprune.cli import main

STUDY_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pre_reno_study" / "study.db"


class _Payload:
    def __reduce__(self):  # noqa: ANN204
        return print, ("a stranger's code",)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:  # noqa: ANN001
    d = tmp_path_factory.mktemp("inputs")
    (d / "syntax.yaml").write_text("include: [unclosed\n  rate: {")
    (d / "space_key.yaml").write_text("colour: red\n")
    (d / "junk.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"model": _Payload()}, d / "pickled.pt")
    (d / "a_file").write_text("a file, not a folder")
    layers = "layers:\n  'features.*': {type: filter, rate: 0.5}\n"
    (d / "unknown_model.yaml").write_text("model: nosuch-net\ndataset: digits\n" + layers)
    (d / "bad_rate.yaml").write_text("model: digits-cnn\ndataset: digits\nlayers:\n  'features.*': {type: filter, "
                                     "rate: 1.5}\n")  # no checkpoint: a baseline would be trained first
    (d / "pickled_ckpt.yaml").write_text(f"model: digits-cnn\ndataset: digits\ncheckpoint: {d / 'pickled.pt'}\n"
                                         f"{layers}")
    (d / "good.yaml").write_text(f"model: digits-cnn\ndataset: digits\ncheckpoint: {d / 'junk.pt'}\n{layers}")
    shutil.copy(STUDY_FIXTURE, d / "study.db")
    return d


def _args(inputs: Path, argv: list[str]) -> list[str]:
    return [a.replace("IN/", f"{inputs}/") for a in argv]


STUDY = "sqlite:///IN/study.db"  # a study made by an earlier autoprune: pre-reno, trials 0-2

CASES = [
    # search: everything a new study reads is checked before its storage is created
    (["search", "--space", "IN/syntax.yaml"], "is not valid YAML: expected ',' or ']'"),
    (["search", "--space", "IN/space_key.yaml"], "unknown key 'colour'"),
    (["search", "--space", "IN/missing.yaml"], "does not exist"),
    (["search", "--checkpoint", "IN/junk.pt"], "cannot be read: it is not a file torch.save wrote"),
    (["search", "--checkpoint", "IN/pickled.pt"], "is not an autoprune checkpoint: it holds a pickled object"),
    (["search", "--model", "nosuch-net"], "unknown model 'nosuch-net'"),
    (["search", "--dataset", "npz:IN/missing.npz"], "not found"),
    (["search", "--resume"], "no study named"),
    # prune: the config is checked before a missing baseline is trained
    (["prune", "--config", "IN/syntax.yaml"], "is not valid YAML"),
    (["prune", "--config", "IN/unknown_model.yaml"], "unknown model 'nosuch-net'"),
    (["prune", "--config", "IN/bad_rate.yaml"], "must be in [0, 1). Got 1.5"),
    (["prune", "--config", "IN/pickled_ckpt.yaml"], "is not an autoprune checkpoint"),
    (["prune", "--config", "IN/good.yaml", "--out", "IN/a_file/out"], "is a file, not a folder"),
    # export
    (["export", "--study", "pre-reno"], "there is no Optuna storage"),
    (["export", "--study", "nosuch", "--storage", STUDY], "nosuch"),
    (["export", "--study", "pre-reno", "--storage", STUDY, "--trial", "99"], "99"),
    (["export", "--study", "pre-reno", "--storage", STUDY, "--out", "IN/a_file/best.yaml"], "is a file"),
    (["export", "--study", "pre-reno", "--storage", STUDY, "--pick", "bogus"], "unknown --pick 'bogus'"),
    # bench
    (["bench", "--model", "nosuch-net", "--uniform", "filter:0.5"], "unknown model 'nosuch-net'"),
    (["bench", "--model", "digits-cnn", "--uniform", "blocky:0.5"], "unknown sparsity type 'blocky'"),
    (["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--checkpoint", "IN/pickled.pt"],
     "is not an autoprune checkpoint"),
    (["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--input-shape", "3,x"], "is not C,H,W"),
    (["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--runtime", "tensorrt"],
     "unknown runtime 'tensorrt'. Known runtimes: torch, onnxruntime"),
    (["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--runtime", "onnxruntime", "--device", "cpu",
      "--dtype", "bf16"], "runtime 'onnxruntime' does not run on cpu in bf16"),
    # train: checked before the training starts
    (["train", "--model", "digits-cnn", "--lr", "-1"], "--lr must be > 0"),
    (["train", "--model", "digits-cnn", "--out", "IN/"], "is a folder"),
]


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_a_refused_command_prints_one_line_and_leaves_its_folder_empty(inputs, tmp_path, monkeypatch, capsys,
                                                                        argv, fragment) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code = main(_args(inputs, argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoprune: error: "), err
    assert fragment in lines[0], lines[0]
    assert "Weights only load failed" not in lines[0]  # PyTorch's paragraph is not quoted
    assert sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*")) == []


def test_the_real_command_leaves_nothing_behind_either(inputs, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "--space", str(inputs / "syntax.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.rglob("*")) == []
