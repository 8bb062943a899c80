"""The CUDA check, run by ``scripts/gpu_check.sh`` (README: "Checking the CUDA path on a GPU machine").

One command for a GPU machine that has torch but no package registry. It

1. installs the wheels carried in ``.whl/`` (those the machine lacks or has in an older version) and
   autoprune itself (``--no-deps``) into a temporary folder put first on ``PYTHONPATH``;
2. prints the GPU, driver, torch and CUDA versions;
3. runs the CUDA-marked tests;
4. ``autoprune bench --device cuda --json``: tv:resnet18 filter 50% at batch 32 and 256 in fp32, fp16 and
   bf16, tv:alexnet shape 80%, and a 2:4 configuration (tv:resnet50's 1x1 convs, fp16);
5. ``autoprune search --budget 2% --device cuda --no-tracking`` (mlflow is not carried): digits-cnn
   (8 trials: the 5 seeded configurations and 3 sampled) and resnet20 (20 trials), both on ``digits``,
   each with its own runs folder and storage and a baseline trained first by ``autoprune train``;
6. writes ``gpu_check.md`` (every figure, every failure), ``gpu_check.json`` (the same and each
   command's JSON output) and ``steps.log`` (each command's output) into ``$OUT``, else ``runs/gpu_check/``.

Every step runs under its own timeout, and no step starts past the deadline (470 s by default): a step
that fails is recorded and the next one runs; the exit status is 0 only when every step passed. The
summary is rewritten after every step, so a check stopped from outside still leaves one.

``--dry-run`` runs the same steps on the CPU with tiny settings (small batches and inputs, one-epoch
baselines, a few trials with a short ADMM schedule) so that CI and any CPU machine test the script; fp16,
which only CUDA runs, the batch-256 repeats of the batch-32 benches and resnet20's train and search (the
same two commands as digits-cnn's) are skipped with the reason recorded. Its limits are generous (300 s a step, 1500 s in all) for slow, shared CPU machines. Without ``.whl/`` it uses the packages of
the interpreter that runs it.

Standard library only: it runs before anything is installed. Nothing is written into the checkout
(only into ``runs/gpu_check/`` when ``$OUT`` is not set): the commands run from a temporary copy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEADLINE = 470.0  # seconds: the H100 session allows 10 minutes a command, the check aims at 8
# a dry run's steps are cheap but CPU machines (CI, shared 2-core VMs) can be slow and loaded: generous limits
DRY_DEADLINE, DRY_STEP_TIMEOUT = 1500.0, 300.0
MARGIN = 10.0  # kept free at the end for writing the summary
# what the check imports besides torch (autoprune.cli imports the rest lazily)
NEEDED_MODULES = ("optuna", "sqlalchemy", "alembic", "torch_pruning", "plotly", "pytest", "yaml", "rich",
                  "sklearn", "numpy", "autoprune", "torchvision", "autoprune.cli", "autoprune.bench",
                  "autoprune.study", "autoprune.tracking", "autoprune.report", "autoprune.compact",
                  "autoprune.models")
# requirements of autoprune that the check does not need (tracking, dashboards, PostgreSQL workers)
NOT_NEEDED = {"mlflow", "optuna-integration", "optuna-dashboard", "psycopg2-binary"}
STATUSES = ("pass", "skip", "fail", "timeout", "not run")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(requirement: str) -> str:
    """``mlflow>=3.0; extra == 'x'`` -> ``mlflow``."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return norm(m.group(1)) if m else requirement


def version_key(v: str) -> tuple:
    """A comparable key for a version string (packaging's when it is there, else the release numbers)."""
    try:
        from packaging.version import Version

        return (0, Version(v))
    except Exception:  # noqa: BLE001 - no packaging, or an odd version: compare the leading numbers
        nums = [int(x) for x in re.findall(r"\d+", v.split("+")[0])[:4]]
        return (1, tuple(nums))


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def parse_json(stdout: str) -> Any:  # noqa: ANN401
    """The JSON document an ``autoprune ... --json`` command printed (ignoring stray lines before it)."""
    with contextlib.suppress(ValueError):
        return json.loads(stdout)
    m = re.search(r"^[{\[]", stdout, re.MULTILINE)
    if m is None:
        raise ValueError("no JSON in the output")
    obj, _ = json.JSONDecoder().raw_decode(stdout[m.start():])
    return obj


def fmt(v: Any, spec: str = ".3g", none: str = "–") -> str:  # noqa: ANN401
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


class Step:
    """One command of the check and what came of it."""

    def __init__(self, name: str, title: str, *, kind: str, cmd: list[str] | None = None, timeout: float = 60,
                 cwd: Path | None = None, parse: Callable[[Step, str], None] | None = None,
                 needs_cuda: bool = False, skip: str | None = None, before: Callable[[Step], None] | None = None,
                 run: Callable[[Step], None] | None = None, info: dict[str, Any] | None = None) -> None:
        self.name, self.title, self.kind, self.cmd, self.timeout, self.cwd = name, title, kind, cmd, timeout, cwd
        self.parse, self.needs_cuda, self.before, self.run_fn = parse, needs_cuda, before, run
        self.info = dict(info or {})
        self.status = "skip" if skip else "not run"
        self.reason = skip
        self.seconds: float | None = None
        self.rc: int | None = None
        self.figures: dict[str, Any] = {}
        self.raw: Any = None
        self.stdout = self.stderr = ""
        self.notes: list[str] = []

    def fail(self, reason: str) -> None:
        self.status, self.reason = "fail", reason

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "kind": self.kind, "status": self.status,
                "reason": self.reason, "seconds": self.seconds, "rc": self.rc, "cmd": self.cmd, "info": self.info,
                "figures": self.figures, "notes": self.notes}


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.deadline = args.deadline if args.deadline is not None else DRY_DEADLINE if args.dry_run else DEFAULT_DEADLINE
        self.t0 = time.monotonic()
        self.started = datetime.now(timezone.utc)
        self.py = sys.executable
        self.out = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "gpu_check")
        self.wheels_dir = Path(args.wheels) if args.wheels else REPO / ".whl"
        self.work = Path(tempfile.mkdtemp(prefix="autoprune-gpu-check-"))
        self.keep = args.keep
        self.site = self.work / "site"
        self.src = self.work / "src"  # a copy of the checkout's package, tests and search spaces
        self.run_dir = self.work / "run"  # cwd of the autoprune commands (their default runs/ lands here)
        self.extra_path: list[str] = []
        self.cuda_ok: bool | None = None
        self.env_info: dict[str, Any] = {}
        self.install_info: dict[str, Any] = {}
        self.steps: list[Step] = []
        self.current: subprocess.Popen | None = None
        self.device = "cpu" if self.dry else "cuda"

    # -- helpers ------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(self.site), *self.extra_path]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env.setdefault("TMPDIR", str(self.work))
        return env

    def autoprune(self, *args: str) -> list[str]:
        return [self.py, "-m", "autoprune.cli", *args]

    def run_cmd(self, step: Step, cmd: list[str], timeout: float, cwd: Path) -> tuple[int | None, bool]:
        """Run one command in its own process group; on timeout SIGTERM it (autoprune ends a search's running
        trial and prints its summary), then SIGKILL. Returns (exit code, timed out)."""
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        out_path, err_path = logs / f"{step.name}.out", logs / f"{step.name}.err"
        timed_out = False
        with out_path.open("wb") as out, err_path.open("wb") as err:
            try:
                proc = subprocess.Popen(cmd, cwd=cwd, env=self.env(), stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                step.stderr = f"cannot start {cmd[0]}: {exc}"
                return None, False
            self.current = proc
            try:
                rc = proc.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = self._stop(proc)
            finally:
                self.current = None
        step.stdout, step.stderr = read(out_path), read(err_path)
        return rc, timed_out

    @staticmethod
    def _stop(proc: subprocess.Popen) -> int | None:
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return None

    # -- steps --------------------------------------------------------------------------
    def plan(self) -> None:
        dry = self.dry
        S = self.steps
        S.append(Step("install", "install the carried wheels and autoprune", kind="install", run=self.install,
                      timeout=150))
        S.append(Step("environment", "GPU, driver, torch and CUDA versions", kind="env", run=self.environment,
                      timeout=60))
        S.append(Step("cuda-tests", "the CUDA-marked tests (pytest -m cuda)", kind="tests", before=self.tests_cmd,
                      needs_cuda=True,
                      parse=self.parse_tests, timeout=180 if not dry else 120))
        # autoprune bench
        shape = "3,32,32" if dry else "3,224,224"
        common = ["--num-classes", "1000", "--device", self.device, "--json"]
        if dry:
            common += ["--repeats", "3", "--threads", "1"]
        for batch, real in ((32, 2), (256, 4)):
            b = real if dry else batch
            for dtype in ("fp32", "fp16", "bf16"):
                skip = None
                if dry and dtype == "fp16":
                    skip = "fp16 runs on CUDA only; a dry run on the CPU skips it"
                elif dry and batch == 256:
                    skip = "the dry run times one batch size (the batch-32 steps run the same command, at batch 2)"
                S.append(Step(f"bench-resnet18-b{batch}-{dtype}", f"bench tv:resnet18 filter 50%, batch {b}, {dtype}",
                              kind="bench", skip=skip, needs_cuda=True, parse=self.parse_bench, timeout=90,
                              info={"model": "tv:resnet18", "targets": "filter 50% (uniform)", "batch": b,
                                    "dtype": dtype, "input": shape},
                              cmd=self.autoprune("bench", "--model", "tv:resnet18", "--uniform", "filter:0.5",
                                                 "--input-shape", shape, "--batch-size", str(b), "--dtype", dtype,
                                                 *common)))
        a_shape, a_batch = ("3,64,64", 4) if dry else ("3,224,224", 256)  # alexnet needs at least 63x63
        S.append(Step("bench-alexnet-shape80", f"bench tv:alexnet shape 80%, batch {a_batch}, fp32", kind="bench",
                      needs_cuda=True, parse=self.parse_bench, timeout=90,
                      info={"model": "tv:alexnet", "targets": "shape 80% (uniform)", "batch": a_batch, "dtype": "fp32",
                            "input": a_shape},
                      cmd=self.autoprune("bench", "--model", "tv:alexnet", "--uniform", "shape:0.8", "--input-shape",
                                         a_shape, "--batch-size", str(a_batch), "--dtype", "fp32", *common)))
        # 2:4: sparse tensor cores run Linear and 1x1 convs (autoprune.compact.kernels), so resnet50's
        # 1x1 convs on CUDA; the dry run takes resnet18's three 1x1 (downsample) convs to stay fast
        if dry:
            model24, layers24, dtype24, batch24 = "tv:resnet18", ["*.downsample.0"], "fp32", 2
        else:
            model24, layers24, dtype24, batch24 = ("tv:resnet50", ["layer*.*.conv1", "layer*.*.conv3",
                                                                   "*.downsample.0"], "fp16", 256)
        cfg24 = self.work / "sparse24.yaml"
        cfg24.write_text("# written by scripts/gpu_check.py\nmodel: " + model24 + "\ndataset: digits\nlayers:\n"
                         + "".join(f'  "{p}": {{type: "2:4"}}\n' for p in layers24), encoding="utf-8")
        S.append(Step("bench-2of4", f"bench {model24} 2:4 on {', '.join(layers24)}, batch {batch24}, {dtype24}",
                      kind="bench", needs_cuda=True, parse=self.parse_bench, timeout=150,
                      info={"model": model24, "targets": "2:4 on " + ", ".join(layers24), "batch": batch24,
                            "dtype": dtype24, "input": shape},
                      cmd=self.autoprune("bench", "--config", str(cfg24), "--input-shape", shape, "--batch-size",
                                         str(batch24), "--dtype", dtype24, *common)))
        # autoprune train + search
        for model, trials, timeout in (("digits-cnn", 2 if dry else 8, 150), ("resnet20", 2 if dry else 20, 300)):
            runs = self.work / "runs" / model
            ckpt = runs / f"{model}-digits.pt"
            train = ["train", "--model", model, "--dataset", "digits", "--device", self.device, "--out", str(ckpt),
                     "--json"] + (["--epochs", "1"] if dry else [])
            skip = ("the dry run trains and searches one model (digits-cnn runs the same two commands)"
                    if dry and model != "digits-cnn" else None)
            S.append(Step(f"train-{model}", f"train the dense {model} on digits (baseline for the search)",
                          kind="train", needs_cuda=True, parse=self.parse_train, timeout=60 if dry else 120, skip=skip,
                          info={"model": model}, cmd=self.autoprune(*train)))
            search = ["search", "--budget", "2%", "--model", model, "--dataset", "digits", "--device", self.device,
                      "--trials", str(trials), "--no-tracking", "--runs-dir", str(runs),
                      "--storage", f"sqlite:///{runs / 'optuna.db'}",
                      "--space", str(self.src / "search_spaces" / f"{model}.yaml"), "--json"]
            if dry:
                search += ["--latency-batch", "8", "--threads", "1", "--admm-iters", "1", "--admm-epochs", "0.1",
                           "--retrain-epochs", "0.1"]
            S.append(Step(f"search-{model}", f"search --budget 2% on {model} (digits), {trials} trials",
                          kind="search", needs_cuda=True, parse=self.parse_search, timeout=timeout, skip=skip,
                          before=self.search_checkpoint,
                          info={"model": model, "trials": trials, "runs": str(runs), "checkpoint": str(ckpt)},
                          cmd=self.autoprune(*search)))
            if model == "digits-cnn":  # the same search, its latency measured in ONNX Runtime's CUDA provider
                ort_runs = self.work / "runs" / f"{model}-onnxruntime"
                ort = [*search[:search.index("--runs-dir")], "--runs-dir", str(ort_runs), "--storage",
                       f"sqlite:///{ort_runs / 'optuna.db'}", *search[search.index("--space"):], "--runtime",
                       "onnxruntime"]
                S.append(Step(f"search-{model}-onnxruntime", f"search --budget 2% on {model} (digits), {trials} "
                              "trials, latency in onnxruntime (CUDA provider)", kind="search", needs_cuda=True,
                              parse=self.parse_search, timeout=timeout, before=self.onnxruntime_search,
                              skip=("the dry run's device is the CPU; this step times ONNX Runtime's CUDA provider "
                                    "(tests/runtime_tests time its CPU provider)") if dry else None,
                              info={"model": model, "trials": trials, "runs": str(ort_runs), "checkpoint": str(ckpt),
                                    "runtime": "onnxruntime"},
                              cmd=self.autoprune(*ort)))

    def run(self) -> int:
        self.plan()
        print(f"autoprune CUDA check ({'dry run on the CPU' if self.dry else 'CUDA'}), {len(self.steps)} steps, "
              f"deadline {self.deadline:.0f} s; summary: {self.out / 'gpu_check.md'}", flush=True)
        try:
            for step in self.steps:
                self.run_step(step)
                self.write()
        except KeyboardInterrupt:
            for step in self.steps:
                if step.status == "not run" and step.reason is None:
                    step.reason = "the check was interrupted"
            print("interrupted: the summary holds what ran", flush=True)
        finally:
            self.write()
            if not self.keep:
                shutil.rmtree(self.work, ignore_errors=True)
        failed = [s for s in self.steps if s.status not in ("pass", "skip")]
        print(f"{'PASS' if not failed else 'FAIL'}: {sum(s.status == 'pass' for s in self.steps)} passed, "
              f"{sum(s.status == 'skip' for s in self.steps)} skipped, {len(failed)} failed or not run, "
              f"{self.elapsed():.0f} s; {self.out / 'gpu_check.md'}", flush=True)
        return 0 if not failed else 1

    def run_step(self, step: Step) -> None:
        if step.status == "skip":
            print(f"[skip] {step.title}: {step.reason}", flush=True)
            return
        if step.needs_cuda and not self.dry and self.cuda_ok is False:
            step.reason = "CUDA is not available to torch here (see the environment step)"
            print(f"[not run] {step.title}: {step.reason}", flush=True)
            return
        left = self.deadline - self.elapsed() - MARGIN
        if left < 5:
            step.reason = f"not started: the check's deadline of {self.deadline:.0f} s was reached"
            print(f"[not run] {step.title}: {step.reason}", flush=True)
            return
        timeout = min(max(step.timeout, DRY_STEP_TIMEOUT) if self.dry else step.timeout, left)
        step.info["timeout_s"] = round(timeout)
        print(f"[....] {step.title} (timeout {timeout:.0f} s)", flush=True)
        t = time.monotonic()
        try:
            if step.run_fn is not None:
                step.status = "pass"
                step.run_fn(step)
            else:
                if step.before is not None:
                    step.before(step)  # may find nothing to run here: the step is then a skip, with its reason
                if step.status != "skip":
                    self.run_and_parse(step, timeout)
        except KeyboardInterrupt:
            step.status, step.reason = "fail", "interrupted"
            raise
        except Exception as exc:  # noqa: BLE001 - record and go on with the next step
            step.fail(f"{type(exc).__name__}: {exc}")
        finally:
            step.seconds = round(time.monotonic() - t, 1)
        print(f"[{step.status}] {step.title}: {step.seconds:.1f} s" + (f"; {step.reason}" if step.reason else "")
              + (f"; {self.headline(step)}" if step.figures else ""), flush=True)

    def run_and_parse(self, step: Step, timeout: float) -> None:
        rc, timed_out = self.run_cmd(step, step.cmd, timeout, step.cwd or self.run_dir)
        step.rc = rc
        if timed_out:
            step.status, step.reason = "timeout", f"stopped after its {timeout:.0f} s timeout"
        elif rc != 0:
            step.fail(f"exit status {rc}" + (f": {tail(step.stderr, 1)}" if step.stderr.strip() else ""))
        else:
            step.status = "pass"
        if step.parse is not None and (rc == 0 or step.stdout.strip()):
            try:
                step.parse(step, step.stdout)
            except Exception as exc:  # noqa: BLE001 - a figure that cannot be read is a failure
                if step.status == "pass":
                    step.fail(f"output not understood: {type(exc).__name__}: {exc}")
                else:
                    step.notes.append(f"output not understood: {type(exc).__name__}: {exc}")

    # -- install --------------------------------------------------------------------------
    def copy_source(self) -> None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")
        self.src.mkdir(parents=True)
        for name in ("autoprune", "search_spaces", "tests"):
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, self.src / name, ignore=ignore)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (REPO / name).is_file():
                shutil.copy2(REPO / name, self.src / name)

    def install(self, step: Step) -> None:
        self.site.mkdir(parents=True)
        self.run_dir.mkdir(parents=True)
        self.copy_source()
        info = self.install_info
        have = {}
        for dist in _distributions():
            have.setdefault(dist[0], dist[1])
        wheels = sorted(self.wheels_dir.glob("*.whl")) if self.wheels_dir.is_dir() else []
        chosen, present, foreign = [], [], []
        tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        for whl in wheels:
            parts = whl.name[:-4].split("-")
            name, version, pytag = norm(parts[0]), parts[1], parts[-3] if len(parts) >= 5 else "py3"
            if not any(t.startswith("py3") or t == tag for t in pytag.split(".")):
                foreign.append(whl.name)
            elif name in have and version_key(have[name]) >= version_key(version):
                present.append(f"{name} {have[name]}")
            else:
                chosen.append(whl)
        info.update({"wheels_dir": str(self.wheels_dir), "carried": [w.name for w in wheels],
                     "installed": [w.name for w in chosen], "already_present": present, "not_for_this_python": foreign})
        if not wheels:
            step.notes.append(f"no wheels in {self.wheels_dir}: using the packages of {self.py}")
        if foreign:
            step.notes.append(f"wheels for another Python than {tag}, not installed: {', '.join(foreign)}")
        pip_ok = self._pip_works()
        info["pip"] = pip_ok
        if chosen:
            if pip_ok:
                r = self.quiet([self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                "--disable-pip-version-check", "--target", str(self.site), *map(str, chosen)], 120)
                if r.returncode != 0:
                    step.fail(f"pip could not install the carried wheels: {tail(r.stderr, 3)}")
                    self._unzip(chosen)
                    step.notes.append("unpacked the wheels directly instead")
            else:
                self._unzip(chosen)
                step.notes.append("no pip: the wheels were unpacked directly into the target")
        # autoprune itself, from the copy of the working tree (pip builds in the source folder)
        installed = False
        if pip_ok:
            r = self.quiet([self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                            "--no-compile", "--disable-pip-version-check", "--target", str(self.site), str(self.src)],
                           120, env={**self.env(), "PYTHONPATH": str(self.site)})
            installed = r.returncode == 0
            if not installed:
                step.fail(f"pip could not install autoprune (--no-deps, --no-build-isolation): {tail(r.stderr, 3)}")
        if not installed:
            self.extra_path.append(str(self.src))
            step.notes.append("autoprune runs from a copy of the working tree on PYTHONPATH (not installed)")
        info["autoprune"] = "installed into the target" if installed else "source copy on PYTHONPATH"
        # what the check imports, and the requirements of what was carried
        probe = self.quiet([self.py, "-c", PROBE, json.dumps([str(w) for w in wheels]), json.dumps(NEEDED_MODULES)],
                           120)
        try:
            found = json.loads(probe.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            step.fail(f"the import probe failed: {tail(probe.stderr, 3)}")
            return
        info["modules"] = found["modules"]
        info["unmet"] = found["unmet"]
        broken = {m: v for m, v in found["modules"].items() if not v.get("ok")}
        unmet = [u for u in found["unmet"] if not (u["of"] == "autoprune" and req_name(u["requirement"]) in NOT_NEEDED)]
        info["autoprune_not_needed"] = sorted({req_name(u["requirement"]) for u in found["unmet"]
                                               if u["of"] == "autoprune"} & NOT_NEEDED)
        if broken:
            step.fail("cannot import " + "; ".join(f"{m} ({v.get('error')})" for m, v in broken.items()))
        if unmet:
            step.notes.append("unmet requirements: " + "; ".join(f"{u['of']} needs {u['requirement']} "
                                                                 f"({u['found'] or 'absent'})" for u in unmet))
            if step.status == "pass":
                step.fail(step.notes[-1])
        ap = found["modules"].get("autoprune", {})
        step.figures = {"wheels_installed": len(chosen), "wheels_already_present": len(present),
                        "autoprune_from": ap.get("file"), "modules_ok": len(found["modules"]) - len(broken),
                        "modules": len(found["modules"])}

    def _pip_works(self) -> bool:
        try:
            return self.quiet([self.py, "-m", "pip", "--version"], 60).returncode == 0
        except Exception:  # noqa: BLE001
            return False

    def _unzip(self, wheels: list[Path]) -> None:
        """Install wheels without pip: unpack them, moving ``*.data/purelib|platlib`` into place."""
        for whl in wheels:
            with zipfile.ZipFile(whl) as z:
                z.extractall(self.site)
        for data in self.site.glob("*.data"):
            for sub in ("purelib", "platlib"):
                if (data / sub).is_dir():
                    for item in (data / sub).iterdir():
                        target = self.site / item.name
                        if target.exists():
                            shutil.rmtree(target) if target.is_dir() else target.unlink()
                        shutil.move(str(item), str(target))
            shutil.rmtree(data, ignore_errors=True)

    def quiet(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env or self.env(),
                              cwd=self.run_dir, stdin=subprocess.DEVNULL)

    # -- environment ----------------------------------------------------------------------
    def environment(self, step: Step) -> None:
        r = self.quiet([self.py, "-c", ENV_PROBE], 90)
        try:
            info = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            step.fail(f"torch could not be probed: {tail(r.stderr, 3)}")
            self.cuda_ok = False
            return
        info["nvidia_smi"] = None
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                                    "--format=csv,noheader"], check=False, capture_output=True, text=True, timeout=30)
                info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
                if q.returncode == 0 and q.stdout.strip():
                    info["driver"] = q.stdout.strip().splitlines()[0].split(",")[1].strip()
                m = re.search(r"CUDA Version:\s*([\d.]+)",
                              subprocess.run([smi], check=False, capture_output=True, text=True, timeout=30).stdout)
                info["driver_cuda"] = m.group(1) if m else None
            except (OSError, subprocess.SubprocessError, IndexError) as exc:
                step.notes.append(f"nvidia-smi failed: {exc}")
        info["host"] = platform.node()
        info["commit"] = _git_commit()
        self.env_info = info
        self.cuda_ok = bool(info.get("cuda_available"))
        step.figures = {k: info.get(k) for k in ("gpu", "capability", "driver", "torch", "cuda", "cudnn", "python")}
        line = (f"GPU {info.get('gpu') or 'none'}"
                + (f" (compute capability {info['capability']}, {info.get('gpu_memory_gib')} GiB)"
                   if info.get("capability") else "")
                + f", driver {info.get('driver') or 'unknown'}"
                + (f" (CUDA {info['driver_cuda']})" if info.get("driver_cuda") else "")
                + f", torch {info.get('torch')}, CUDA {info.get('cuda') or 'none'}, cuDNN {info.get('cudnn')}, "
                  f"Python {info.get('python')}")
        step.figures["line"] = line
        if not self.dry and not self.cuda_ok:
            step.fail("torch.cuda.is_available() is False: " + (info.get("cuda_error") or "no CUDA device"))

    # -- tests ----------------------------------------------------------------------------
    def tests_cmd(self, step: Step) -> None:
        files = sorted(str(p.relative_to(self.src)) for p in (self.src / "tests").rglob("test_*.py")
                       if "mark.cuda" in read(p))
        if not files:
            raise RuntimeError("no test file has a cuda-marked test")
        step.info["files"] = files
        step.cwd = self.src
        step.cmd = [self.py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={self.work / 'junit.xml'}", *files]

    def parse_tests(self, step: Step, stdout: str) -> None:
        import xml.etree.ElementTree as ET

        root = ET.parse(self.work / "junit.xml").getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        failing = []
        for case in root.iter("testcase"):
            for kind in ("failure", "error"):
                el = case.find(kind)
                if el is not None:
                    failing.append(f"{case.get('classname')}::{case.get('name')}: "
                                   f"{(el.get('message') or '').splitlines()[0][:200] if el.get('message') else kind}")
        passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
        step.figures = {"collected": n["tests"], "passed": passed, "failed": n["failures"], "errors": n["errors"],
                        "skipped": n["skipped"], "failing": failing[:30],
                        "summary": tail(stdout, 1)}
        if step.status == "pass" and not self.dry and passed == 0:
            step.fail("no CUDA test ran (all skipped)")
        if self.dry and step.status == "pass":
            step.notes.append(f"dry run: {n['skipped']} of {n['tests']} skipped without CUDA, as in CI")

    # -- bench ----------------------------------------------------------------------------
    def parse_bench(self, step: Step, stdout: str) -> None:
        r = parse_json(stdout)
        step.raw = r
        kernels: dict[str, int] = {}
        for layer in r.get("layers", []):
            kernels[layer.get("kernel", "?")] = kernels.get(layer.get("kernel", "?"), 0) + 1
        d, c = r["dense"]["latency"], r["compacted"]["latency"]
        step.figures = {"speedup": float(r["speedup"]), "measured_speedup": float(r["measured_speedup"]),
                        "dense_ms": d["median_ms"], "dense_p90_ms": d.get("p90_ms"),
                        "compacted_ms": c["median_ms"], "compacted_p90_ms": c.get("p90_ms"),
                        "mac_ratio": r.get("mac_ratio"), "param_ratio": r.get("param_ratio"),
                        "unchanged": r.get("unchanged"), "slower_than_dense": r.get("slower_than_dense"),
                        "kernels": kernels, "channel_multiple": r.get("settings", {}).get("channel_multiple"),
                        "device": d.get("device"), "notes": r.get("notes", [])[:5]}

    # -- train + search -------------------------------------------------------------------
    def parse_train(self, step: Step, stdout: str) -> None:
        r = parse_json(stdout)
        step.figures = {"val_acc": r.get("val_acc"), "test_acc": r.get("test_acc"), "epochs": r.get("epochs"),
                        "device": r.get("device"), "seconds": step.seconds}

    def search_checkpoint(self, step: Step) -> None:
        ckpt = step.info["checkpoint"]
        if Path(ckpt).is_file():
            step.cmd = [*step.cmd, "--checkpoint", ckpt]
        else:
            step.notes.append("no baseline from the train step: the search trains its own (included in its time)")

    def onnxruntime_search(self, step: Step) -> None:
        """The onnxruntime search runs only where the installed build has the CUDA provider."""
        probe = subprocess.run([self.py, "-c", "import onnxruntime as o; print(','.join(o.get_available_providers()))"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            step.status, step.reason = "skip", "onnxruntime is not installed here (the GPU wheels carry no onnxruntime)"
            return
        providers = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else ""
        step.info["providers"] = providers
        if "CUDAExecutionProvider" not in providers.split(","):
            step.status, step.reason = "skip", (f"this onnxruntime build has no CUDAExecutionProvider (it has "
                                                f"{providers or 'none'}): carry onnxruntime-gpu for CUDA figures")
            return
        self.search_checkpoint(step)

    def parse_search(self, step: Step, stdout: str) -> None:
        r = parse_json(stdout)
        step.raw = r
        trials, meta, best = r["trials"], r["meta"], r.get("best_feasible")
        total = int(trials["total"])
        durations = _trial_durations(Path(step.info["runs"]) / "optuna.db")
        step.figures = {
            "trials": total, "complete": trials["complete"], "stopped_early": trials["pruned"],
            "failed": trials["failed"], "feasible": trials["feasible"], "search_s": r["seconds"],
            "s_per_trial": r["seconds"] / total if total else None,
            "trial_s_median": statistics.median(durations) if durations else None,
            "trial_s_max": max(durations) if durations else None,
            "dense_val_acc": meta.get("dense_accuracy"), "latency_batch": meta.get("latency_batch"),
            "dense_ms": meta.get("dense_latency_ms"), "device": meta.get("device_description"),
            "channel_multiple": meta.get("channel_multiple"), "interrupted": r.get("interrupted"),
            "best": None if best is None else {"trial": best["number"], "speedup": best.get("speedup"),
                                               "accuracy": best.get("score"), "summary": best.get("summary")},
        }
        if step.status == "pass" and total < int(step.info["trials"]):
            step.fail(f"only {total} of {step.info['trials']} trials ran")
        if step.status == "pass" and trials["complete"] == 0:
            step.fail("no trial completed")

    # -- summary --------------------------------------------------------------------------
    def headline(self, step: Step) -> str:
        f = step.figures
        if step.kind == "bench" and "speedup" in f:
            return f"dense {fmt(f['dense_ms'])} ms, compacted {fmt(f['compacted_ms'])} ms, {f['speedup']:.2f}x"
        if step.kind == "search" and "trials" in f:
            best = f["best"]["speedup"] if f.get("best") else None
            return (f"{f['trials']} trials in {fmt(f['search_s'], '.1f')} s ({fmt(f['s_per_trial'], '.2f')} s/trial), "
                    f"best within budget {fmt(best, '.2f')}x")
        if step.kind == "tests" and "collected" in f:
            return f"{f['passed']} passed, {f['failed']} failed, {f['errors']} errors, {f['skipped']} skipped"
        if step.kind == "train" and "val_acc" in f:
            return f"validation {fmt(f['val_acc'], '.1%')}"
        if step.kind == "env":
            return f.get("line", "")
        if step.kind == "install":
            return (f"{f.get('wheels_installed')} wheels installed, {f.get('wheels_already_present')} already present, "
                    f"{f.get('modules_ok')}/{f.get('modules')} modules import")
        return ""

    def write(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            failed = [s for s in self.steps if s.status not in ("pass", "skip")]
            data = {"overall": "pass" if not failed else "fail", "mode": "dry-run" if self.dry else "cuda",
                    "started": self.started.isoformat(timespec="seconds"), "seconds": round(self.elapsed(), 1),
                    "deadline_s": self.deadline, "python": self.py, "environment": self.env_info,
                    "install": self.install_info, "steps": [s.to_dict() for s in self.steps],
                    "outputs": {s.name: s.raw for s in self.steps if s.raw is not None}}
            _write(self.out / "gpu_check.json", json.dumps(data, indent=1, default=str) + "\n")
            _write(self.out / "gpu_check.md", self.markdown(failed))
            _write(self.out / "steps.log", self.log())
        except OSError as exc:
            print(f"cannot write the summary into {self.out}: {exc}", file=sys.stderr, flush=True)

    def markdown(self, failed: list[Step]) -> str:
        e = self.env_info
        lines = [f"# autoprune CUDA check: {'PASS' if not failed else 'FAIL'}", ""]
        mode = ("dry run on the CPU with tiny settings (these are not CUDA figures: they only show that every step "
                "runs)" if self.dry else "CUDA")
        lines += [f"- mode: {mode}",
                  f"- started {self.started.strftime('%Y-%m-%d %H:%M')} UTC on {e.get('host') or platform.node()}, "
                  f"took {self.elapsed():.0f} s (deadline {self.deadline:.0f} s); commit {e.get('commit') or 'unknown'}",
                  f"- steps: {sum(s.status == 'pass' for s in self.steps)} passed, "
                  f"{sum(s.status == 'skip' for s in self.steps)} skipped, {len(failed)} failed or not run", ""]
        lines += ["## Machine", ""]
        if e:
            lines += [f"- GPU: {e.get('gpu') or 'none'}"
                      + (f", compute capability {e['capability']}, {e.get('gpu_memory_gib')} GiB" if e.get("capability")
                         else ""),
                      f"- driver: {e.get('driver') or 'unknown'}"
                      + (f" (supports CUDA {e['driver_cuda']})" if e.get("driver_cuda") else "")
                      + (f"; nvidia-smi: {e['nvidia_smi']}" if e.get("nvidia_smi") else "; no nvidia-smi"),
                      f"- torch {e.get('torch')}, CUDA {e.get('cuda') or 'none'}, cuDNN {e.get('cudnn')}, "
                      f"torchvision {e.get('torchvision')}, numpy {e.get('numpy')}, Python {e.get('python')} "
                      f"({self.py})",
                      f"- CPU: {e.get('cpu')}, {e.get('cpus')} cores"]
        else:
            lines.append("- (the environment step did not run)")
        i = self.install_info
        if i:
            lines.append(f"- carried wheels installed: {', '.join(i.get('installed') or []) or 'none'}")
            lines.append(f"- already on the machine (not installed): {', '.join(i.get('already_present') or []) or 'none'}")
            lines.append(f"- autoprune: {i.get('autoprune')}; not carried, not needed by the check: "
                         f"{', '.join(i.get('autoprune_not_needed') or []) or '–'} (the searches run with --no-tracking)")
        lines += ["", "## Steps", "", "| step | status | s | result |", "|---|---|---|---|"]
        for s in self.steps:
            result = "; ".join(x for x in (s.reason, self.headline(s)) if x)
            lines.append(f"| {s.title} | {s.status} | {fmt(s.seconds, '.1f')} | {_cell(result)} |")
        benches = [s for s in self.steps if s.kind == "bench" and s.status != "skip"]  # skips: in the steps table
        if benches:
            lines += ["", "## Latency: `autoprune bench`", "",
                      "Speedup = dense median / compacted median, paired round by round (`measured_speedup`; "
                      "`speedup` is 1.0 when nothing changed form).", "",
                      "| model | targets | input | batch | dtype | dense ms (p90) | compacted ms (p90) | speedup | "
                      "MAC ratio | kernels | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
            for s in benches:
                f, inf = s.figures, s.info
                kern = ", ".join(f"{k} {v}" for k, v in (f.get("kernels") or {}).items())
                lines.append(f"| {inf['model']} | {inf['targets']} | {inf['input']} | {inf['batch']} | {inf['dtype']} | "
                             f"{fmt(f.get('dense_ms'))} ({fmt(f.get('dense_p90_ms'))}) | "
                             f"{fmt(f.get('compacted_ms'))} ({fmt(f.get('compacted_p90_ms'))}) | "
                             f"{fmt(f.get('speedup'), '.2f')}{'x' if f.get('speedup') else ''}"
                             f"{' (nothing changed form)' if f.get('unchanged') else ''} | "
                             f"{fmt(f.get('mac_ratio'), '.2f')} | {kern or '–'} | {s.status} |")
        searches = [s for s in self.steps if s.kind in ("train", "search")]
        if searches:
            lines += ["", "## Search: `autoprune search --budget 2% --no-tracking`", "",
                      "| step | trials (complete / stopped early / failed) | search s | s per trial | median trial s | "
                      "dense val acc | latency batch | dense ms | best within budget | status |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for s in searches:
                f = s.figures
                if s.kind == "train":
                    lines.append(f"| {s.title} | – | {fmt(s.seconds, '.1f')} (training) | – | – | "
                                 f"{fmt(f.get('val_acc'), '.1%')} | – | – | – | {s.status} |")
                    continue
                best = f.get("best")
                best_s = (f"trial {best['trial']}: {fmt(best['speedup'], '.2f')}x at {fmt(best['accuracy'], '.1%')} "
                          f"({best['summary']})" if best else "none")
                lines.append(f"| {s.title} | {f.get('trials', '–')} ({f.get('complete', '–')} / "
                             f"{f.get('stopped_early', '–')} / {f.get('failed', '–')}) | {fmt(f.get('search_s'), '.1f')} | "
                             f"{fmt(f.get('s_per_trial'), '.2f')} | {fmt(f.get('trial_s_median'), '.2f')} | "
                             f"{fmt(f.get('dense_val_acc'), '.1%')} | {fmt(f.get('latency_batch'))} | "
                             f"{fmt(f.get('dense_ms'))} | {_cell(best_s)} | {s.status} |")
        tests = next((s for s in self.steps if s.kind == "tests"), None)
        if tests is not None and tests.figures.get("failing"):
            lines += ["", "## Failing CUDA tests", ""] + [f"- `{x}`" for x in tests.figures["failing"]]
        lines += ["", "## Failures", ""]
        if not failed:
            lines.append("None.")
        not_run = [s for s in failed if s.status == "not run"]
        for s in failed:
            if s.status == "not run":
                continue
            lines += [f"### {s.title}: {s.status}", "", f"{s.reason or ''}", ""]
            if s.notes:
                lines += [f"- {n}" for n in s.notes] + [""]
            if s.cmd:
                lines += ["```", " ".join(s.cmd), "```", ""]
            if s.stderr.strip():
                lines += ["Last lines of its error output:", "", "```", tail(s.stderr, 25), "```", ""]
        if not_run:
            lines += ["Not run:", ""] + [f"- {s.title}: {s.reason}" for s in not_run] + [""]
        notes = [(s, n) for s in self.steps if s.status in ("pass", "skip") for n in s.notes]
        if notes:
            lines += ["", "## Notes", ""] + [f"- {s.title}: {n}" for s, n in notes]
        lines += ["", "## Commands", "", "Each ran from a temporary folder with `PYTHONPATH` at the installed target; "
                  "`gpu_check.json` has every figure and each command's JSON output, `steps.log` their output.", ""]
        lines += [f"- {s.name}: `{' '.join(s.cmd)}`" for s in self.steps if s.cmd]
        return "\n".join(lines) + "\n"

    def log(self) -> str:
        parts = []
        for s in self.steps:
            parts.append(f"===== {s.name}: {s.status} ({fmt(s.seconds, '.1f')} s, rc {s.rc})")
            if s.cmd:
                parts.append("$ " + " ".join(s.cmd))
            if s.reason:
                parts.append(f"reason: {s.reason}")
            parts += [f"note: {n}" for n in s.notes]
            if s.stdout.strip():
                parts += ["--- stdout (last 40 lines)", tail(s.stdout, 40)]
            if s.stderr.strip():
                parts += ["--- stderr (last 80 lines)", tail(s.stderr, 80)]
            parts.append("")
        return "\n".join(parts) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _distributions() -> list[tuple[str, str]]:
    from importlib import metadata

    out = []
    for d in metadata.distributions():
        with contextlib.suppress(Exception):
            out.append((norm(d.metadata["Name"]), d.version))
    return out


def _git_commit() -> str | None:
    if not shutil.which("git"):
        return None
    with contextlib.suppress(Exception):
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
                           timeout=10)
        if r.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                   check=False, capture_output=True, text=True, timeout=20).stdout.strip()
            return r.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    return None


def _trial_durations(db: Path) -> list[float]:
    """Seconds each finished trial took, from the Optuna SQLite storage (empty when unreadable)."""
    out = []
    with contextlib.suppress(Exception), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        for start, end in c.execute("SELECT datetime_start, datetime_complete FROM trials "
                                    "WHERE datetime_start IS NOT NULL AND datetime_complete IS NOT NULL"):
            a, b = (datetime.fromisoformat(str(x)) for x in (start, end))
            out.append((b - a).total_seconds())
    return out


# Runs in the target environment: imports what the check needs, checks the carried wheels' requirements.
PROBE = r"""
import importlib, json, re, sys, zipfile
from importlib import metadata
wheels, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
out = {"modules": {}, "unmet": []}
for m in modules:
    try:
        if m == "torchvision":  # as autoprune imports it (a CPU-only torch needs its workaround)
            from autoprune._torchvision import import_torchvision
            mod = import_torchvision()
        else:
            mod = importlib.import_module(m)
        out["modules"][m] = {"ok": True, "version": getattr(mod, "__version__", None),
                             "file": getattr(mod, "__file__", None)}
    except BaseException as exc:
        out["modules"][m] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
reqs = []
for w in wheels:
    try:
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(meta).decode("utf-8")
        name = w.rsplit("/", 1)[-1].split("-")[0]
        reqs += [(name, l.split(":", 1)[1].strip()) for l in text.splitlines() if l.startswith("Requires-Dist:")]
    except Exception as exc:
        out["unmet"].append({"of": w, "requirement": "readable wheel", "found": str(exc)})
try:
    reqs += [("autoprune", r) for r in metadata.requires("autoprune") or []]
except Exception:
    pass
try:
    from packaging.requirements import Requirement
except Exception as exc:
    Requirement = None
    out["unmet"].append({"of": "check", "requirement": "packaging (to read requirements)", "found": None})
if Requirement is not None:
    for of, text in reqs:
        try:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                found = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                found = None
            if found is None or (req.specifier and not req.specifier.contains(found, prereleases=True)):
                out["unmet"].append({"of": norm(of), "requirement": text, "found": found})
        except Exception as exc:
            out["unmet"].append({"of": norm(of), "requirement": text, "found": f"unreadable: {exc}"})
print(json.dumps(out))
"""

ENV_PROBE = r"""
import json, os, platform, sys
info = {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
try:
    with open("/proc/cpuinfo") as f:
        info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), info["cpu"])
except OSError:
    pass
import torch
info.update({"torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None})
try:
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        info.update({"gpu": torch.cuda.get_device_name(0), "capability": "%d.%d" % torch.cuda.get_device_capability(0),
                     "gpu_memory_gib": round(p.total_memory / 2**30, 1), "gpu_count": torch.cuda.device_count(),
                     "bf16": torch.cuda.is_bf16_supported()})
        try:  # the CUDA version the driver supports (nvidia-smi, when present, also gives the driver release)
            v = torch._C._cuda_getDriverVersion()
            info["driver_cuda"] = "%d.%d" % (v // 1000, (v % 1000) // 10)
        except Exception:
            pass
except Exception as exc:
    info["cuda_available"] = False
    info["cuda_error"] = f"{type(exc).__name__}: {exc}"
for name in ("torchvision", "numpy"):
    try:
        from importlib import metadata
        info[name] = metadata.version(name)
    except Exception:
        info[name] = None
print(json.dumps(info))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny settings")
    p.add_argument("--deadline", type=float, default=None,
                   help=f"seconds after which no step starts, and each step's timeout is cut to fit (default: "
                        f"{DEFAULT_DEADLINE:.0f}; {DRY_DEADLINE:.0f} for a dry run)")
    p.add_argument("--out", default=None, help="where the summary goes (default: $OUT, else runs/gpu_check/)")
    p.add_argument("--wheels", default=None, help="folder of carried wheels (default: .whl/ of the checkout)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (printed) for inspection")
    args = p.parse_args(argv)
    check = Check(args)
    if args.keep:
        print(f"temporary folder: {check.work}", flush=True)

    def _term(signum, frame):  # noqa: ANN001, ANN202 - stop the running step, write what ran
        if check.current is not None:
            Check._stop(check.current)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _term)
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
