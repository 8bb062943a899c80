"""Files written atomically: a writer killed (SIGKILL) at a random moment leaves the old file or
the new one, never a torn one.

One helper process imports autoprune once, then for each round forks a writer that writes
two versions in turn, without end, through the real writer (checkpoints, ``summary.json``
and ``best_config.yaml``, the latency cache, the deployable folder); the test kills it
after a random delay and loads what is there.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoprune.atomic import replace_folder, write_text_atomic
from autoprune.checkpoint import load_checkpoint
from autoprune.deploy import load_pruned
from autoprune.latency import LatencyCache

_PAD = 3_000_000  # elements: each version takes some milliseconds to write

_WRITERS = r"""
import os, sys
from pathlib import Path
import torch
from autoprune.atomic import staged_folder, write_text_atomic
from autoprune.checkpoint import Checkpoint
from autoprune.deploy.archive import save_registry_model
from autoprune.latency import LatencyCache, LatencyResult
from autoprune.models import create_model

PAD = int(sys.argv[1])
BASE = {"model": "digits-cnn", "in_channels": 1, "num_classes": 10, "image_size": [8, 8]}

def text(path, v):
    write_text_atomic(path, f"version {v}\n" + str(v) * PAD + "\nend\n")

def checkpoint(path, v):
    Checkpoint(model="digits-cnn", dataset="digits", in_channels=1, num_classes=10, image_size=(8, 8),
               state_dict={"w": torch.full((PAD,), float(v))}, metrics={"version": v}).save(path)

def latency_cache(path, v):
    r = LatencyResult(median_ms=float(v), p90_ms=1.0, p10_ms=0.0, min_ms=0.0, repeats=1, batch_size=1,
                      dtype="fp32", device="cpu:x", threads=None, channels_last=False)
    LatencyCache(path).put("k", r, extra={"version": v, "pad": str(v) * PAD})

def folder(path, v):
    model = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(v))
    with staged_folder(Path(path)) as tmp:
        save_registry_model(model, tmp, base=BASE)
        (tmp / "version.txt").write_text(str(v))
        torch.save(torch.full((PAD,), float(v)), tmp / "pad.pt")

WRITE = {"text": text, "checkpoint": checkpoint, "latency_cache": latency_cache, "folder": folder}

def fork(work):  # this process runs no torch ops itself: a fork after them could hang in OpenMP
    pid = os.fork()
    if pid == 0:
        work()
        os._exit(0)
    return pid

def forever(kind, path):  # the writer: versions 1, 0, 1, ... until killed
    v = 1
    while True:
        WRITE[kind](path, v)
        v = 1 - v

for line in sys.stdin:
    kind, path = line.split()
    if not os.path.exists(path):  # the old version, complete
        assert os.waitpid(fork(lambda: WRITE[kind](path, 0)), 0)[1] == 0
    pid = fork(lambda: forever(kind, path))
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _version_of(kind: str, path: Path) -> int:
    """The version the file (or folder) at ``path`` holds, checked whole; fails on a torn one."""
    if kind == "text":
        text = path.read_text()
        head, body, end = text.split("\n")[:3]
        v = int(head.split()[1])
        assert body == str(v) * _PAD and end == "end" and text.endswith("end\n")
        return v
    if kind == "checkpoint":
        ckpt = load_checkpoint(path)
        v = int(ckpt.metrics["version"])
        assert torch.equal(ckpt.state_dict["w"], torch.full((_PAD,), float(v)))
        return v
    if kind == "latency_cache":
        cache = LatencyCache(path)  # a torn file would be set aside with a warning: an error here
        v = int(cache.extra("k")["version"])
        assert cache.get("k").median_ms == v and cache.extra("k")["pad"] == str(v) * _PAD
        return v
    v = int((path / "version.txt").read_text())
    model = load_pruned(path)
    assert all(bool((p == float(v)).all()) for p in model.parameters())
    assert torch.equal(torch.load(path / "pad.pt", weights_only=True), torch.full((_PAD,), float(v)))
    return v


def _leftovers(kind: str, path: Path) -> list[Path]:
    """What a writer killed mid-write leaves beside ``path``: its temporary file or folder."""
    pattern = f".{path.name}.partial-*" if kind == "folder" else f".{path.name}.*.tmp"
    return list(path.parent.glob(pattern))


@pytest.mark.filterwarnings("error::UserWarning")  # a set-aside (torn) latency cache fails the test
def test_a_writer_killed_at_a_random_moment_leaves_the_old_or_the_new_file(tmp_path) -> None:
    rng = random.Random(15)
    helper = subprocess.Popen([sys.executable, "-c", _WRITERS, str(_PAD)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    seen: dict[str, set[int]] = {}
    mid_write: dict[str, int] = {}
    try:
        for kind in ("text", "checkpoint", "latency_cache", "folder"):
            path = tmp_path / kind / ("out" if kind == "folder" else f"{kind}.data")
            path.parent.mkdir()
            # at least 6 rounds, and on until two kills have landed mid-write and both versions
            # have been seen whole (at most 60)
            rounds = 0
            while rounds < 6 or ((mid_write.get(kind, 0) < 2 or len(seen.get(kind, ())) < 2) and rounds < 60):
                rounds += 1
                helper.stdin.write(f"{kind} {path}\n")
                helper.stdin.flush()
                pid = int(helper.stdout.readline())
                # a writer slower than the longest delay (a loaded machine) would never land a version:
                # past the first six rounds the delays double every six
                time.sleep(rng.uniform(0.02, 0.2) * 2 ** min((rounds - 1) // 6, 3))
                os.kill(pid, signal.SIGKILL)
                assert helper.stdout.readline().strip() == "reaped"
                seen.setdefault(kind, set()).add(_version_of(kind, path))
                left = _leftovers(kind, path)
                mid_write[kind] = mid_write.get(kind, 0) + bool(left)
                for p in left:  # as a later run of the writer would overwrite them
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    finally:
        helper.kill()
        helper.communicate(timeout=60)
    # the kills landed mid-write (a temporary file was left), else the test proves nothing
    assert all(mid_write.get(k, 0) >= 2 for k in ("text", "checkpoint", "latency_cache", "folder")), mid_write
    # every kill left a whole version, and the writer did land the new one (version 1) as well as the old
    assert seen == {k: {0, 1} for k in ("text", "checkpoint", "latency_cache", "folder")}, seen


def test_replace_folder_swaps_in_the_new_folder_and_removes_the_old(tmp_path) -> None:
    out, new = tmp_path / "out", tmp_path / ".out.partial"
    write_text_atomic(out / "a.txt", "old")
    write_text_atomic(new / "b.txt", "new")
    replace_folder(new, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["b.txt"] and (out / "b.txt").read_text() == "new"
