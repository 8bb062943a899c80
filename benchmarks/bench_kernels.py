"""Kernel benchmark: masked dense conv vs the shape-wise gather-GEMM (and CSR) on AlexNet convs.

Writes benchmarks/results/kernels.md and kernels.json (with the machine described). Not a
test: timings are noisy and machine-specific. Run:

    .venv/bin/python benchmarks/bench_kernels.py [--batch 8] [--threads 2] [--repeats 30]
        [--channels-last] [--quick] [--out benchmarks/results/kernels]

Layers are AlexNet conv2-conv5 at a 224x224 input. For each rate of im2col columns removed
(the columns of largest L2 norm of a random weight are kept: ``get_sparsity("shape")``),
every form is timed in interleaved rounds (one call of each form per round, after warm-up),
and the median and the best round are reported:

* ``dense``: the conv with the masked weight (``candidate_forms(...)["dense"]``);
* ``shape-gemm``: :class:`ShapeSparseConv2d` as ``candidate_forms`` builds it (gather of
  the kept im2col rows through a strided view, then a 1x1 conv: oneDNN on CPU);
* ``shape-mm``: the same gather, GEMM through ``torch.matmul`` (MKL) instead;
* ``unfold``: ``F.unfold`` + column ``index_select`` + GEMM, the naive form, for reference;
* ``csr``: :class:`CSRConv2d` on the same mask (``candidate_forms`` offers CSR only for
  irregular masks; a second table times it there, against dense, at the same rates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from autoprune.compact.kernels import (  # noqa: E402
    CSRConv2d,
    ShapeSparseConv2d,
    candidate_forms,
    column_structure,
)
from autoprune.sparsity import get_sparsity  # noqa: E402

#: name -> (in, out, kernel, padding, input H=W) for a 224x224 AlexNet (torchvision layout).
LAYERS = {
    "conv2": (64, 192, 5, 2, 27),
    "conv3": (192, 384, 3, 1, 13),
    "conv4": (384, 256, 3, 1, 13),
    "conv5": (256, 256, 3, 1, 13),
}
RATES = (0.5, 0.8, 0.93)


class UnfoldGemm(nn.Module):
    """The naive shape-wise form: unfold everything, keep the columns, one GEMM."""

    def __init__(self, conv: nn.Conv2d, columns: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("kept", torch.nonzero(columns).flatten())
        self.weight = conv.weight.detach().reshape(conv.out_channels, -1)[:, self.kept].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        n, _, h, w = x.shape
        ho = (h + 2 * c.padding[0] - c.dilation[0] * (c.kernel_size[0] - 1) - 1) // c.stride[0] + 1
        wo = (w + 2 * c.padding[1] - c.dilation[1] * (c.kernel_size[1] - 1) - 1) // c.stride[1] + 1
        cols = F.unfold(x, c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride)
        out = torch.matmul(self.weight, cols.index_select(1, self.kept)) + c.bias.view(1, -1, 1)
        return out.view(n, -1, ho, wo)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_family() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu family"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def time_forms(forms: dict[str, nn.Module], x: torch.Tensor, warmup: int, repeats: int) -> dict[str, dict]:
    """Interleaved rounds: each round calls every form once. Median and best in ms."""
    times: dict[str, list[float]] = {name: [] for name in forms}
    with torch.inference_mode():
        for _ in range(warmup):
            for form in forms.values():
                form(x)
        for _ in range(repeats):
            for name, form in forms.items():
                t0 = time.perf_counter()
                form(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: {"median_ms": statistics.median(t), "min_ms": min(t)} for n, t in times.items()}


def check_equal(forms: dict[str, nn.Module], x: torch.Tensor) -> None:
    with torch.inference_mode():
        ref = forms["dense"](x)
        scale = float(ref.abs().max())
        for name, form in forms.items():
            torch.testing.assert_close(
                form(x), ref, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true", help="feed channels-last inputs")
    ap.add_argument("--quick", action="store_true", help="5 repeats, 1 warm-up (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "results" / "kernels"))
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.warmup = 5, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")

    shape_rows, csr_rows = [], []
    for layer, (cin, cout, k, pad, hw) in LAYERS.items():
        conv = nn.Conv2d(cin, cout, k, padding=pad)
        x = torch.randn(args.batch, cin, hw, hw)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for rate in RATES:
            mask = get_sparsity("shape").mask(conv.weight, rate)
            columns, _ = column_structure(mask)
            forms = candidate_forms(conv, mask, device=cpu, dtype=torch.float32)
            masked = forms["dense"]
            forms["shape-mm"] = ShapeSparseConv2d.from_conv(masked, columns, gemm="mm").eval()
            forms["unfold"] = UnfoldGemm(masked, columns).eval()
            forms["csr"] = CSRConv2d.from_conv(masked, mask).eval()
            check_equal(forms, x)
            t = time_forms(forms, x, args.warmup, args.repeats)
            dense = t["dense"]["median_ms"]
            row = {
                "layer": layer, "shape": f"{cin}->{cout} k{k} p{pad} on {hw}x{hw}", "rate": rate,
                "columns_kept": int(columns.sum()), "columns": int(columns.numel()),
                "mac_ratio": columns.numel() / int(columns.sum()),
                "ms": t, "speedup": {n: dense / v["median_ms"] for n, v in t.items()},
            }
            shape_rows.append(row)
            print(f"shape {layer} {rate:.2f}: " + "  ".join(
                f"{n} {v['median_ms']:.2f} ms ({row['speedup'][n]:.2f}x)" for n, v in t.items()), flush=True)

            irregular = get_sparsity("irregular").mask(conv.weight, rate)
            iforms = candidate_forms(conv, irregular, device=cpu, dtype=torch.float32)
            if "csr" in iforms:
                check_equal(iforms, x)
                ti = time_forms(iforms, x, args.warmup, args.repeats)
                csr_rows.append({
                    "layer": layer, "rate": rate, "ms": ti,
                    "speedup": {n: ti["dense"]["median_ms"] / v["median_ms"] for n, v in ti.items()},
                })
                print(
                    f"irregular {layer} {rate:.2f}: dense {ti['dense']['median_ms']:.2f} ms, "
                    f"csr {ti['csr']['median_ms']:.2f} ms ({csr_rows[-1]['speedup']['csr']:.2f}x)",
                    flush=True,
                )

    machine = {
        "cpu": cpu_model(), "cpu_family": cpu_family(), "cores": os.cpu_count(), "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg(),
    }
    settings = {
        "batch": args.batch, "warmup": args.warmup, "repeats": args.repeats, "input": "224x224 AlexNet",
        "memory_format": "channels_last" if args.channels_last else "NCHW",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": machine, "settings": settings, "shape": shape_rows, "irregular": csr_rows}, indent=2))

    forms = ["dense", "shape-gemm", "shape-mm", "unfold", "csr"]
    lines = [
        f"# Kernels: shape-wise gather-GEMM vs masked dense conv ({machine['cpu']})",
        "",
        f"{machine['cores']} cores, {args.threads} threads, torch {machine['torch']}, batch {args.batch} "
        f"({settings['memory_format']}), "
        f"AlexNet convs at 224x224, median of {args.repeats} interleaved rounds after {args.warmup} warm-up "
        f"(load average at the end: {', '.join(f'{v:.2f}' for v in machine['load_average'])}; "
        f"{machine['date']}). Written by `benchmarks/bench_kernels.py`.",
        "",
        "## Shape sparsity (columns of largest norm kept)",
        "",
        "Median ms, speedup over dense in brackets; MACs = dense MACs / shape-gemm MACs.",
        "`shape-gemm` is what `candidate_forms` offers; `shape-mm` is the same gather with an MKL GEMM, "
        "`unfold` is F.unfold + index_select + GEMM, `csr` is CSRConv2d on the same mask (for reference).",
        "",
        "| layer | shape | removed | kept cols | MACs | " + " | ".join(forms) + " |",
        "|---|---|---|---|---|" + "---|" * len(forms),
    ]
    for r in shape_rows:
        cells = [f"{r['ms'][f]['median_ms']:.2f} ({r['speedup'][f]:.2f}x)" for f in forms]
        lines.append(
            f"| {r['layer']} | {r['shape']} | {r['rate']:.0%} | {r['columns_kept']}/{r['columns']} | "
            f"{r['mac_ratio']:.1f}x | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Best round (ms), same runs: "
        + "; ".join(
            f"{r['layer']}@{r['rate']:.0%} dense {r['ms']['dense']['min_ms']:.2f} / shape-gemm "
            f"{r['ms']['shape-gemm']['min_ms']:.2f}"
            for r in shape_rows
        ),
        "",
        "## Irregular sparsity (weights of largest magnitude kept): dense vs CSR",
        "",
        "| layer | removed | dense | csr |",
        "|---|---|---|---|",
    ]
    for r in csr_rows:
        lines.append(
            f"| {r['layer']} | {r['rate']:.0%} | {r['ms']['dense']['median_ms']:.2f} | "
            f"{r['ms']['csr']['median_ms']:.2f} ({r['speedup']['csr']:.2f}x) |"
        )
    lines += [
        "",
        "Notes: `dense` is PyTorch's oneDNN convolution. The gathered column matrix is up to ~10x the "
        "input, so ShapeSparseConv2d writes it into a buffer kept between calls on CPU: allocated afresh, "
        "glibc returned such blocks to the OS and faulted them back in at every call (~10k page faults, "
        "about 2x the time at conv2/50%). Timings of every form still depend on the process's allocator "
        "state; compare forms measured in the same process.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
