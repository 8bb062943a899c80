"""Every kernel form computes what the masked dense layer computes; the list of forms is right."""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import threading
import time

import pytest
import torch
from torch import nn

from autoprune.compact.kernels import (
    CSRConv2d,
    CSRLinear,
    SemiStructuredConv2d,
    SemiStructuredLinear,
    ShapeSparseConv2d,
    candidate_forms,
    column_structure,
    is_semi_structured,
)
from autoprune.sparsity import get_sparsity

CPU = torch.device("cpu")


def _masked(module: nn.Module, mask: torch.Tensor) -> nn.Module:
    ref = copy.deepcopy(module)
    with torch.no_grad():
        ref.weight.mul_(mask.to(ref.weight.dtype))
    return ref.eval()


def _assert_same(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert out.shape == ref.shape
    assert out.dtype == ref.dtype
    scale = float(ref.detach().abs().max()) or 1.0
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol * scale)


def _check_all_forms(module: nn.Module, mask: torch.Tensor, x: torch.Tensor, **kw) -> dict[str, nn.Module]:
    dtype = kw.pop("dtype", torch.float32)
    forms = candidate_forms(module, mask, device=CPU, dtype=dtype)
    with torch.no_grad():
        ref = _masked(module, mask).to(dtype)(x.to(dtype))
        for name, form in forms.items():
            out = form(x.to(dtype))
            try:
                _assert_same(out, ref, **kw)
            except AssertionError as exc:
                raise AssertionError(f"form {name!r} differs from the masked dense layer") from exc
    return forms


# --------------------------------------------------------------------- shape-wise convs


_CONV_GRID = list(itertools.product((1, 3, 5), (1, 2), (0, 1, 2), (1, 2), (True, False)))


@pytest.mark.parametrize(("k", "stride", "padding", "dilation", "bias"), _CONV_GRID)
def test_shape_gemm_equals_the_masked_conv(
    k: int, stride: int, padding: int, dilation: int, bias: bool
) -> None:
    torch.manual_seed(k * 100 + stride * 10 + padding + dilation)
    conv = nn.Conv2d(5, 7, k, stride=stride, padding=padding, dilation=dilation, bias=bias)
    x = torch.randn(3, 5, 12, 11)
    for rate in (0.3, 0.8, 0.93):
        mask = get_sparsity("shape").mask(conv.weight, rate)
        forms = _check_all_forms(conv, mask, x)
        assert set(forms) == {"dense", "shape-gemm"}, rate
        mm = ShapeSparseConv2d.from_conv(_masked(conv, mask), column_structure(mask)[0], gemm="mm")
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = _masked(conv, mask)(x)
            _assert_same(mm(x), ref)
            for form in (forms["shape-gemm"], mm):  # channels-last in, channels-last out (gathered as NHWC)
                out = form(x_cl)
                _assert_same(out.contiguous(), ref)
                assert out.is_contiguous(memory_format=torch.channels_last), (form.gemm, out.stride())
                assert out.dim() == 4 and min(out.shape[1:]) > 1  # else both layouts would be one
                assert form(x).is_contiguous()  # NCHW in, NCHW out


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        nn.Conv2d(6, 4, (1, 3), stride=(1, 3), padding=(0, 1)),
        nn.Conv2d(6, 4, 3, padding="same", dilation=2),
        nn.Conv2d(6, 4, 4, padding="same"),  # even kernel: asymmetric padding
        nn.Conv2d(6, 4, 3, padding="valid", bias=False),
        nn.Conv2d(6, 4, 3, padding=0, padding_mode="reflect"),  # no padding: mode irrelevant
    ],
    ids=["rect", "rect-1x3", "same-dil", "same-even", "valid", "reflect-unpadded"],
)
def test_shape_gemm_handles_rectangular_and_named_padding(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    mask = get_sparsity("shape").mask(conv.weight, 0.6)
    forms = _check_all_forms(conv, mask, torch.randn(2, 6, 13, 10))
    assert "shape-gemm" in forms


def test_shape_gemm_accepts_any_input_layout_and_unbatched_input() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=1, stride=2)
    mask = get_sparsity("shape").mask(conv.weight, 0.8)
    form = candidate_forms(conv, mask, device=CPU, dtype=torch.float32)["shape-gemm"]
    ref = _masked(conv, mask)
    x = torch.randn(4, 8, 15, 15)
    with torch.no_grad():
        out = form(x.contiguous(memory_format=torch.channels_last))
        assert out.is_contiguous(memory_format=torch.channels_last)  # like the dense conv's output
        _assert_same(out, ref(x))
        assert form(x).is_contiguous()
        big = torch.randn(4, 8, 15, 30)
        _assert_same(form(big[..., ::2]), ref(big[..., ::2]))  # non-contiguous
        _assert_same(form(x[1:]), ref(x[1:]))  # storage offset
        _assert_same(form(x[0]), ref(x[0]))  # unbatched [C, H, W]
        y = torch.randn(2, 8, 7, 9)  # another spatial size after the first call
        _assert_same(form(y), ref(y))
        _assert_same(form(x), ref(x))


def test_shape_gemm_reuses_its_buffer_safely() -> None:
    torch.manual_seed(13)
    conv = nn.Conv2d(6, 8, 3, padding=1)
    mask = get_sparsity("shape").mask(conv.weight, 0.6)
    form = candidate_forms(conv, mask, device=CPU, dtype=torch.float32)["shape-gemm"]
    ref = _masked(conv, mask)
    x1, x2 = torch.randn(2, 6, 9, 9), torch.randn(2, 6, 9, 9)
    with torch.inference_mode():
        out1 = form(x1)
        kept = out1.clone()
        form(x2)
        assert torch.equal(out1, kept)  # an earlier output is not overwritten
    with torch.no_grad():
        _assert_same(form(x1), ref(x1))  # buffer made in inference mode, used outside it
    x = x2.clone().requires_grad_(True)  # autograd through the gather: no buffer
    form(x).square().sum().backward()
    xr = x2.clone().requires_grad_(True)
    ref(xr).square().sum().backward()
    _assert_same(x.grad, xr.grad)
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        xi = torch.full((2, 6, 9, 9), float(i)) + x1
        for _ in range(20):
            results[i] = form(xi)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        for i, out in results.items():
            _assert_same(out, ref(torch.full((2, 6, 9, 9), float(i)) + x1))
    assert len(pickle.dumps(form)) < 20_000  # buffers and caches are not saved
    form.release_workspace()
    assert not form._workspace


def test_forms_built_in_inference_mode_run_everywhere() -> None:
    torch.manual_seed(14)
    conv = nn.Conv2d(6, 8, 3, padding=1)
    x = torch.randn(2, 6, 9, 9)
    for name in ("shape", "irregular"):
        mask = get_sparsity(name).mask(conv.weight, 0.7)
        with torch.inference_mode():
            forms = candidate_forms(conv, mask, device=CPU, dtype=torch.float32)
            inside = {k: f(x) for k, f in forms.items()}
        with torch.no_grad():
            ref = _masked(conv, mask)(x)
            for k, form in forms.items():
                _assert_same(inside[k], ref)
                _assert_same(form(x), ref)


def test_shape_gemm_keeps_only_the_kept_columns() -> None:
    conv = nn.Conv2d(4, 6, 3)
    mask = get_sparsity("shape").mask(conv.weight, 0.75)
    form = candidate_forms(conv, mask, device=CPU, dtype=torch.float32)["shape-gemm"]
    assert form.kept_columns == int(column_structure(mask)[0].sum()) == 9
    assert sum(p.numel() for p in form.parameters()) == 6 * 9 + 6


def test_shape_gemm_for_channel_and_filter_shape_masks() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    x = torch.randn(2, 8, 9, 9)
    for sparsity in ("channel", "filter+shape"):
        mask = get_sparsity(sparsity).mask(conv.weight, 0.5)
        assert set(_check_all_forms(conv, mask, x)) == {"dense", "shape-gemm"}, sparsity


def test_no_column_kept_gives_the_bias() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    mask = torch.zeros_like(conv.weight, dtype=torch.bool)
    forms = _check_all_forms(conv, mask, torch.randn(2, 3, 5, 5))
    assert set(forms) == {"dense", "shape-gemm"}


# --------------------------------------------------------------------- which forms are listed


def test_a_mask_that_is_not_column_structured_gets_no_shape_gemm() -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 9, 9)
    for rate in (0.3, 0.93):
        mask = get_sparsity("irregular").mask(conv.weight, rate)
        assert not column_structure(mask)[1]
        forms = _check_all_forms(conv, mask, x)
        assert "shape-gemm" not in forms
        assert ("csr" in forms) == (rate >= 0.5)


def test_listed_forms_per_sparsity_type() -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    lin = nn.Linear(32, 24)
    expected_conv = {
        "filter": {"dense"},  # rows only: channel removal's job
        "shape": {"dense", "shape-gemm"},
        "irregular": {"dense", "csr"},
        "2:4": {"dense", "csr"},  # CPU: no semi-structured
    }
    for name, keys in expected_conv.items():
        mask = get_sparsity(name).mask(conv.weight, None if ":" in name else 0.7)
        assert set(candidate_forms(conv, mask, device=CPU, dtype=torch.float32)) == keys, name
    assert set(candidate_forms(conv, torch.ones_like(conv.weight, dtype=torch.bool), device=CPU,
                               dtype=torch.float32)) == {"dense"}
    for name, keys in {"irregular": {"dense", "csr"}, "shape": {"dense"}, "2:4": {"dense", "csr"}}.items():
        mask = get_sparsity(name).mask(lin.weight, None if ":" in name else 0.7)
        assert set(candidate_forms(lin, mask, device=CPU, dtype=torch.float32)) == keys, name


def test_forms_follow_dtype_and_are_inference_ready() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1)
    before = conv.weight.detach().clone()
    mask = get_sparsity("irregular").mask(conv.weight, 0.8)
    forms = candidate_forms(conv, mask, device=CPU, dtype=torch.float64)
    assert set(forms) == {"dense"}  # CSR is offered for float32 only
    shape_mask = get_sparsity("shape").mask(conv.weight, 0.8)
    forms.update(candidate_forms(conv, shape_mask, device=CPU, dtype=torch.float64))
    for name, form in forms.items():
        assert not form.training, name
        assert all(p.dtype == torch.float64 and not p.requires_grad for p in form.parameters()), name
    assert torch.equal(conv.weight, before)  # the module itself is untouched
    assert conv.weight.requires_grad


def test_unsupported_convs_get_only_dense() -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 8, 9, 9)
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2)
    reflect = nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect")
    for conv in (grouped, reflect):
        for name in ("shape", "irregular"):
            mask = get_sparsity(name).mask(conv.weight, 0.8)
            assert set(_check_all_forms(conv, mask, x)) == {"dense"}
    conv1d = nn.Conv1d(4, 4, 3)
    mask = get_sparsity("shape").mask(conv1d.weight, 0.5)
    assert set(candidate_forms(conv1d, mask, device=CPU, dtype=torch.float32)) == {"dense"}


def test_bad_arguments_raise_value_error() -> None:
    conv = nn.Conv2d(4, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        candidate_forms(conv, torch.ones(4, 4, 3, dtype=torch.bool), device=CPU, dtype=torch.float32)
    with pytest.raises(ValueError, match="weight"):
        candidate_forms(nn.ReLU(), torch.ones(1, dtype=torch.bool), device=CPU, dtype=torch.float32)
    with pytest.raises(ValueError, match="1-D"):
        ShapeSparseConv2d.from_conv(conv, torch.ones(35, dtype=torch.bool))
    with pytest.raises(ValueError, match="groups"):
        ShapeSparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), torch.ones(18, dtype=torch.bool))
    with pytest.raises(ValueError, match="padding_mode"):
        circular = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        CSRConv2d.from_conv(circular, torch.ones(4, 4, 3, 3, dtype=torch.bool))
    lin = nn.Linear(64, 32)
    with pytest.raises(ValueError, match=r"SemiStructuredLinear needs a CUDA weight; this one is on cpu"):
        SemiStructuredLinear.from_linear(lin, get_sparsity("2:4").mask(lin.weight, None))
    with pytest.raises(ValueError, match=r"SemiStructuredConv2d needs a 1x1 conv with groups=1 and no padding"):
        SemiStructuredConv2d.from_conv(nn.Conv2d(64, 32, 3), torch.ones(32, 64, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask.*shape"):
        SemiStructuredLinear.from_linear(lin, torch.ones(32, 63, dtype=torch.bool))


def test_mask_helpers() -> None:
    w = torch.randn(6, 4, 3, 3)
    assert column_structure(get_sparsity("filter+shape").mask(w, 0.5))[1]
    assert not column_structure(get_sparsity("2:4").mask(w, None))[1]
    assert is_semi_structured(get_sparsity("2:4").mask(w, None))
    assert is_semi_structured(get_sparsity("1:4").mask(w, None))
    assert not is_semi_structured(torch.ones(6, 4, 3, 3, dtype=torch.bool))
    assert not is_semi_structured(torch.zeros(6, 3, dtype=torch.bool))  # K not divisible by 4


# --------------------------------------------------------------------- CSR


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rate", [0.5, 0.8, 0.95])
def test_csr_linear_equals_the_masked_linear(rate: float, bias: bool) -> None:
    torch.manual_seed(6)
    lin = nn.Linear(40, 24, bias=bias)
    mask = get_sparsity("irregular").mask(lin.weight, rate)
    forms = _check_all_forms(lin, mask, torch.randn(5, 40))
    assert set(forms) == {"dense", "csr"}
    assert isinstance(forms["csr"], CSRLinear)
    with torch.no_grad():  # any leading dims
        x = torch.randn(2, 3, 40)
        _assert_same(forms["csr"](x), _masked(lin, mask)(x))


@pytest.mark.parametrize(
    ("k", "stride", "padding", "dilation"), [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 2, 2), (5, 2, 1, 1)]
)
@pytest.mark.parametrize("rate", [0.5, 0.93])
def test_csr_conv_equals_the_masked_conv(
    k: int, stride: int, padding: int, dilation: int, rate: float
) -> None:
    torch.manual_seed(7)
    conv = nn.Conv2d(6, 10, k, stride=stride, padding=padding, dilation=dilation)
    mask = get_sparsity("irregular").mask(conv.weight, rate)
    forms = _check_all_forms(conv, mask, torch.randn(3, 6, 11, 12))
    assert isinstance(forms["csr"], CSRConv2d)
    with torch.no_grad():
        x = torch.randn(6, 11, 12)
        _assert_same(forms["csr"](x), _masked(conv, mask)(x))


# --------------------------------------------------------------------- saving and export


def test_forms_survive_pickling_and_state_dict() -> None:
    torch.manual_seed(8)
    conv = nn.Conv2d(6, 8, 3, padding=1)
    lin = nn.Linear(20, 6)
    cpu32 = {"device": CPU, "dtype": torch.float32}
    model_forms = [
        candidate_forms(conv, get_sparsity("shape").mask(conv.weight, 0.7), **cpu32)["shape-gemm"],
        candidate_forms(conv, get_sparsity("irregular").mask(conv.weight, 0.7), **cpu32)["csr"],
        candidate_forms(lin, get_sparsity("irregular").mask(lin.weight, 0.7), **cpu32)["csr"],
    ]
    inputs = [torch.randn(2, 6, 7, 7), torch.randn(2, 6, 7, 7), torch.randn(3, 20)]
    for form, x in zip(model_forms, inputs):
        with torch.no_grad():
            ref = form(x)
            buf = io.BytesIO()
            torch.save(form, buf)
            buf.seek(0)
            loaded = torch.load(buf, weights_only=False)
            _assert_same(loaded(x), ref)
            fresh = copy.deepcopy(form)
            for t in fresh.state_dict().values():
                t.zero_()
            fresh(x)  # the cache of the zeroed indices must not survive the reload below
            fresh.load_state_dict(form.state_dict())
            _assert_same(fresh(x), ref)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")  # the TorchScript-based exporter's tracer warnings
def test_shape_gemm_exports_to_onnx() -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(9)
    conv = nn.Conv2d(6, 8, 3, padding=1, stride=2)
    mask = get_sparsity("shape").mask(conv.weight, 0.7)
    form = candidate_forms(conv, mask, device=CPU, dtype=torch.float32)["shape-gemm"]
    x = torch.randn(2, 6, 11, 11)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(form, (x,), buf, dynamo=False)
        ref = form(x)
    session = ort.InferenceSession(buf.getvalue())
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    _assert_same(torch.from_numpy(out), ref)
    exported = torch.export.export(form, (x,))
    _assert_same(exported.module()(x), ref)


# --------------------------------------------------------------------- speed (one large, certain gap)


@pytest.mark.slow
def test_shape_gemm_is_much_faster_at_93_percent_on_an_alexnet_conv3() -> None:
    torch.manual_seed(10)
    threads = torch.get_num_threads()
    # One thread: with two, a neighbour holding a core stalls every parallel region, and the
    # gather's several regions per call lost to dense's one (once seen: 104 ms against 68 ms
    # under a niced test run); one thread is slowed alike in both forms (here: ~8x apart)
    torch.set_num_threads(1)
    try:
        conv = nn.Conv2d(192, 384, 3, padding=1)
        mask = get_sparsity("shape").mask(conv.weight, 0.93)
        forms = candidate_forms(conv, mask, device=CPU, dtype=torch.float32)
        x = torch.randn(8, 192, 13, 13)
        best = {name: float("inf") for name in ("dense", "shape-gemm")}
        with torch.inference_mode():
            for name in best:
                forms[name](x)
            for _ in range(20):  # interleaved, best of 20: robust to a busy machine
                for name in best:
                    t0 = time.perf_counter()
                    forms[name](x)
                    best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    assert best["dense"] / best["shape-gemm"] > 1.5, best


# --------------------------------------------------------------------- 2:4 logic on the CPU
# The 2:4 forms need CUDA sparse tensor cores; their guards and the choice of candidates are
# plain logic, checked here with the device faked where only a guard looks at it. The real
# kernels run in the CUDA tests below.


@pytest.fixture
def fake_cuda(monkeypatch):  # noqa: ANN001, ANN201
    """CPU tensors pass the "on CUDA" guard, forms stay on the CPU, the GPU has compute
    capability ``fake_cuda["capability"]`` and ``to_sparse_semi_structured`` returns the
    masked dense weight (or raises ``fake_cuda["convert_error"]``)."""
    import autoprune.compact.kernels.forms as forms
    import autoprune.compact.kernels.semi_structured as semi

    state = {"capability": (8, 0), "convert_error": None, "converted": 0}
    real_finish = forms._finish

    def convert(w):  # noqa: ANN001, ANN202
        if state["convert_error"] is not None:
            raise state["convert_error"]
        state["converted"] += 1
        return w

    monkeypatch.setattr(semi, "_on_cuda", lambda t: True)
    monkeypatch.setattr(forms, "_finish", lambda m, device, dtype: real_finish(m, CPU, dtype))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", convert)
    return state


def test_semi_structured_weight_guards(fake_cuda, monkeypatch) -> None:  # noqa: ANN001
    import autoprune.compact.kernels.semi_structured as semi
    from autoprune.compact.kernels import SemiStructuredUnsupported
    from autoprune.compact.kernels.semi_structured import _semi_structured_weight

    torch.manual_seed(0)
    w = torch.randn(16, 32, dtype=torch.bfloat16)
    mask = get_sparsity("2:4").mask(w.float(), None)
    assert torch.equal(_semi_structured_weight(w, mask, "L"), w * mask)  # every guard passed
    with pytest.raises(ValueError, match=r"L needs a float16 or bfloat16 weight; this one is torch.float32") as e:
        _semi_structured_weight(w.float(), mask, "L")
    assert not isinstance(e.value, SemiStructuredUnsupported)  # a wrong request, not this machine's limit
    with pytest.raises(ValueError, match=r"L needs a 2:4 mask") as e:
        _semi_structured_weight(w, get_sparsity("irregular").mask(w.float(), 0.5), "L")
    assert not isinstance(e.value, SemiStructuredUnsupported)
    fake_cuda["capability"] = (7, 5)
    with pytest.raises(SemiStructuredUnsupported, match=r"compute capability 8.0 or newer"):
        _semi_structured_weight(w, mask, "L")
    fake_cuda["capability"] = (9, 0)
    fake_cuda["convert_error"] = RuntimeError("shape not supported by cuSPARSELt")
    with pytest.raises(SemiStructuredUnsupported, match=r"cannot be made semi-structured here: shape not supported"):
        _semi_structured_weight(w, mask, "L")
    monkeypatch.setattr(semi, "_on_cuda", lambda t: t.device.type == "cuda")  # the real guard
    with pytest.raises(ValueError, match=r"L needs a CUDA weight; this one is on cpu"):
        _semi_structured_weight(w, mask, "L")


def test_semi_structured_candidates_on_a_faked_gpu(fake_cuda) -> None:  # noqa: ANN001
    cuda = torch.device("cuda")
    torch.manual_seed(1)
    lin = nn.Linear(32, 16)
    mask = get_sparsity("2:4").mask(lin.weight, None)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    forms = candidate_forms(lin, mask, device=cuda, dtype=torch.bfloat16)
    assert list(forms) == ["dense", "semi-structured"] and isinstance(forms["semi-structured"], SemiStructuredLinear)
    with torch.no_grad():
        torch.testing.assert_close(forms["semi-structured"](x), _masked(lin, mask).to(torch.bfloat16)(x))
    # 1x1 convs, strided too, become SemiStructuredConv2d
    conv = nn.Conv2d(32, 16, 1, stride=2)
    cmask = get_sparsity("2:4").mask(conv.weight, None)
    forms = candidate_forms(conv, cmask, device=cuda, dtype=torch.float16)
    assert isinstance(forms.get("semi-structured"), SemiStructuredConv2d)
    # not candidates: fp32, a mask that is not 2:4, a 3x3 or padded or grouped conv
    converted = fake_cuda["converted"]
    assert "semi-structured" not in candidate_forms(lin, mask, device=cuda, dtype=torch.float32)
    irregular = get_sparsity("irregular").mask(lin.weight, 0.5)
    assert "semi-structured" not in candidate_forms(lin, irregular, device=cuda, dtype=torch.float16)
    for other in (nn.Conv2d(32, 16, 3), nn.Conv2d(32, 16, 1, padding=1), nn.Conv2d(32, 16, 1, groups=2)):
        m = get_sparsity("2:4").mask(other.weight, None)
        assert is_semi_structured(m)
        assert set(candidate_forms(other, m, device=cuda, dtype=torch.float16)) <= {"dense", "shape-gemm"}
    assert fake_cuda["converted"] == converted  # none of them was even tried
    # this GPU cannot: no candidate, no error
    fake_cuda["capability"] = (7, 5)
    assert "semi-structured" not in candidate_forms(lin, mask, device=cuda, dtype=torch.float16)
    fake_cuda["capability"] = (8, 6)
    fake_cuda["convert_error"] = RuntimeError("CUDA error: operation not supported")
    assert "semi-structured" not in candidate_forms(lin, mask, device=cuda, dtype=torch.float16)


def test_semi_structured_candidates_let_other_errors_through(fake_cuda, monkeypatch) -> None:  # noqa: ANN001
    """Only "this GPU cannot" drops the candidate; a bug is not swallowed."""
    import autoprune.compact.kernels.semi_structured as semi

    def broken(weight, mask, who):  # noqa: ANN001, ANN202
        raise ValueError("a bug in the 2:4 path")

    monkeypatch.setattr(semi, "_semi_structured_weight", broken)
    lin = nn.Linear(32, 16)
    with pytest.raises(ValueError, match="a bug in the 2:4 path"):
        candidate_forms(lin, get_sparsity("2:4").mask(lin.weight, None), device=torch.device("cuda"),
                        dtype=torch.float16)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_semi_structured_conv_forward_is_the_1x1_conv(stride: tuple[int, int], bias: bool) -> None:
    """SemiStructuredConv2d's own work (stride by slicing, pixels as rows, back to NCHW) with
    a CPU stand-in for the 2:4 linear (the constructor takes any weight)."""
    torch.manual_seed(2)
    conv = nn.Conv2d(12, 7, 1, stride=stride, bias=bias).eval()
    mask = get_sparsity("2:4").mask(conv.weight, None)
    ref = _masked(conv, mask)
    w = (conv.weight.detach() * mask).reshape(7, 12)
    layer = SemiStructuredConv2d(SemiStructuredLinear(w, conv.bias.detach() if bias else None, 12, 7), stride)
    x = torch.randn(3, 12, 9, 10)
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            out = layer(inp)
            _assert_same(out, ref(x))
            assert out.is_contiguous()
        _assert_same(layer(x[0]), ref(x[0]))  # unbatched


# --------------------------------------------------------------------- to_dense
def _kernels_on_the_cpu() -> list[tuple[str, nn.Module, torch.Tensor, nn.Module]]:
    """One of each kernel form (and padding case) with an input and its masked dense reference;
    the 2:4 forms with a CPU stand-in weight (their constructors take any weight)."""
    torch.manual_seed(3)
    out = []
    for padding in (1, "same"):  # "same" with an even kernel: uneven padding
        conv = nn.Conv2d(8, 12, (3, 4) if padding == "same" else 3, padding=padding).eval()
        x = torch.randn(2, 8, 9, 9)
        mask = get_sparsity("shape").mask(conv.weight, 0.7)
        out.append((f"shape-gemm/{padding}", ShapeSparseConv2d.from_conv(conv, column_structure(mask)[0]), x,
                    _masked(conv, mask)))
        mask = get_sparsity("irregular").mask(conv.weight, 0.7)
        out.append((f"csr-conv/{padding}", CSRConv2d.from_conv(conv, mask), x, _masked(conv, mask)))
    lin = nn.Linear(32, 16).eval()
    mask = get_sparsity("irregular").mask(lin.weight, 0.7)
    out.append(("csr-linear", CSRLinear.from_linear(lin, mask), torch.randn(5, 32), _masked(lin, mask)))
    mask = get_sparsity("2:4").mask(lin.weight, None)
    semi = SemiStructuredLinear(lin.weight.detach() * mask, lin.bias.detach(), 32, 16)
    out.append(("semi-linear", semi, torch.randn(5, 32), _masked(lin, mask)))
    conv = nn.Conv2d(32, 16, 1, stride=2).eval()
    mask = get_sparsity("2:4").mask(conv.weight, None)
    semi = SemiStructuredLinear((conv.weight.detach() * mask).reshape(16, 32), conv.bias.detach(), 32, 16)
    out.append(("semi-conv", SemiStructuredConv2d(semi, (2, 2)), torch.randn(2, 32, 9, 9), _masked(conv, mask)))
    return out


@pytest.mark.parametrize("case", range(len(_kernels_on_the_cpu())))
def test_to_dense_is_the_plain_masked_layer(case: int) -> None:
    name, kernel, x, ref = _kernels_on_the_cpu()[case]
    dense = kernel.eval().to_dense().eval()
    plain = [m for m in dense.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(plain) == 1 and type(plain[0]) is type(ref), name
    assert not [m for m in dense.modules() if type(m).__module__.startswith("autoprune")], name
    assert plain[0].weight.device == x.device and plain[0].weight.dtype == x.dtype
    with torch.no_grad():
        _assert_same(dense(x), kernel(x))
        _assert_same(dense(x), ref(x))
    assert torch.equal(plain[0].weight != 0, ref.weight != 0)  # zeros exactly where masked


def test_every_kernel_class_has_to_dense() -> None:
    import autoprune.compact.kernels as kernels

    forms = [getattr(kernels, n) for n in kernels.__all__]
    forms = [c for c in forms if isinstance(c, type) and issubclass(c, nn.Module)
             and c not in (kernels.GatherConv2d, kernels.CSRWeight)]
    assert {c.__name__ for c in forms} == {"ShapeSparseConv2d", "CSRConv2d", "CSRLinear", "SemiStructuredLinear",
                                            "SemiStructuredConv2d"}
    tested = {type(k).__name__ for _, k, _, _ in _kernels_on_the_cpu()}
    assert tested == {c.__name__ for c in forms}  # the test above covers every form
    assert all(callable(getattr(c, "to_dense", None)) for c in forms)


# --------------------------------------------------------------------- CUDA


@pytest.fixture
def no_tf32():  # noqa: ANN201
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _needs_sparse_tensor_cores() -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("2:4 semi-structured sparsity needs compute capability 8.0 or newer")


@pytest.mark.cuda
def test_shape_gemm_on_cuda(no_tf32) -> None:  # noqa: ANN001
    torch.manual_seed(11)
    dev = torch.device("cuda")
    conv = nn.Conv2d(16, 32, 3, padding=1, stride=2)
    mask = get_sparsity("shape").mask(conv.weight, 0.8)
    forms = candidate_forms(conv, mask, device=dev, dtype=torch.float32)
    assert set(forms) == {"dense", "shape-gemm"}  # no CSR off the CPU
    x = torch.randn(4, 16, 17, 17, device=dev)
    with torch.no_grad():
        ref = _masked(conv, mask).to(dev)(x)
        _assert_same(forms["shape-gemm"](x), ref)
        half = candidate_forms(conv, mask, device=dev, dtype=torch.float16)
        _assert_same(half["shape-gemm"](x.half()).float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_linear_and_1x1_conv(dtype: torch.dtype) -> None:
    _needs_sparse_tensor_cores()
    torch.manual_seed(12)
    dev = torch.device("cuda")
    lin = nn.Linear(256, 128)
    mask = get_sparsity("2:4").mask(lin.weight, None)
    forms = candidate_forms(lin, mask, device=dev, dtype=dtype)
    assert set(forms) == {"dense", "semi-structured"}
    assert isinstance(forms["semi-structured"], SemiStructuredLinear)
    x = torch.randn(64, 256, device=dev, dtype=dtype)
    with torch.no_grad():
        ref = forms["dense"](x).float()
        _assert_same(forms["semi-structured"](x).float(), ref, rtol=2e-2, atol=2e-2)

    conv = nn.Conv2d(128, 64, 1, stride=2)
    mask = get_sparsity("2:4").mask(conv.weight, None)
    forms = candidate_forms(conv, mask, device=dev, dtype=dtype)
    assert isinstance(forms.get("semi-structured"), SemiStructuredConv2d)
    x = torch.randn(4, 128, 16, 16, device=dev, dtype=dtype)
    with torch.no_grad():
        ref = forms["dense"](x).float()
        _assert_same(forms["semi-structured"](x).float(), ref, rtol=2e-2, atol=2e-2)

    dense = forms["semi-structured"].to_dense()  # the real 2:4 weight back as a plain conv
    assert type(dense) is nn.Conv2d and dense.weight.dtype == dtype and dense.weight.device.type == "cuda"
    with torch.no_grad():
        _assert_same(dense(x).float(), ref, rtol=2e-2, atol=2e-2)

    irregular = get_sparsity("irregular").mask(lin.weight, 0.5)
    assert "semi-structured" not in candidate_forms(lin, irregular, device=dev, dtype=dtype)
    mask = get_sparsity("2:4").mask(lin.weight, None)
    assert "semi-structured" not in candidate_forms(lin, mask, device=dev, dtype=torch.float32)
