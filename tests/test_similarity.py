"""Pairwise cosines against float64: the Triton kernel (run on CPU by Triton's interpreter) and the torch path."""
import os

# triton.jit decides between compiling and interpreting when a kernel is *defined*, so the variable must be set
# before dataeff._kernels.pairwise_gram is imported; reload it below in case another test imported it first.
os.environ["TRITON_INTERPRET"] = "1"

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import dataeff._kernels.pairwise_gram as pairwise_gram
from dataeff.core import FP64_U, DataeffError, gamma
from dataeff.similarity import TORCH_BLOCK_COLS, _pick_backend, cosine_error_bound, gram, gram_error_bound, median_pairwise_cosine, pairwise_cosine

if not pairwise_gram.INTERPRET:
    pairwise_gram = importlib.reload(pairwise_gram)
assert pairwise_gram.INTERPRET, "the Triton kernel must run in interpreter mode in these CPU tests"


@pytest.fixture(autouse=True, scope="module")
def single_threaded_numpy_blas():
    "The interpreter's dots run in numpy; its BLAS threads fight torch's OpenMP threads (10x slower on 2 cores)."
    with threadpool_limits(1, user_api="blas"):
        yield


def heavy_tailed(k, D, seed):
    "Entries of random sign with magnitudes log-uniform over 1e-8..1e3; column 0 is >= 1e-3 so no row rounds to zero."
    g = torch.Generator().manual_seed(seed)
    mag = 10 ** (11 * torch.rand(k, D, generator=g, dtype=torch.float64) - 8)
    mag[:, 0] = 10 ** (6 * torch.rand(k, generator=g, dtype=torch.float64) - 3)
    return mag * torch.randn(k, D, generator=g, dtype=torch.float64).sign()


def cosine_tol(D, block):
    "Guaranteed |Δcos| of an fp32 path whose sums run over <= `block` terms, plus the float64 reference's own rounding (2γ_D)."
    return cosine_error_bound(D, block) + 2 * gamma(D, FP64_U)


KERNEL_TOL = lambda D: cosine_tol(D, pairwise_gram.MAX_BLOCK_D)  # the kernel's longest fp32 sum is one BLOCK_D block
TORCH_TOL = lambda D: cosine_tol(D, TORCH_BLOCK_COLS)  # the torch path's is one TORCH_BLOCK_COLS block


def cosine64(x):
    "Float64 cosine matrix of the rows of `x` (as stored: the reference for rounded half-precision inputs)."
    g = x.double() @ x.double().T
    norm = g.diagonal().sqrt()
    return g / (norm[:, None] * norm[None, :])


def layouts(x):
    "The same k × D values as a contiguous tensor, a tensor with padded (strided, misaligned) rows, and a chunk list."
    k, D = x.shape
    padded = torch.zeros(k, D + 13, dtype=x.dtype)
    padded[:, 5:5 + D] = x
    strided = padded[:, 5:5 + D]
    a, b = D // 3, D // 3 + min(D - D // 3, 1)
    chunks = [strided[:, :a],                    # strided rows (may be empty)
              x[:, a:b].clone(),                 # a contiguous narrow chunk
              x[:, b:].T.contiguous().T]         # column-major: exercises the non-unit column stride
    return {"contiguous": x, "strided": strided, "chunks": chunks}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("D", [1, 7, 1000, 65537])
@pytest.mark.parametrize("k", [1, 2, 3, 17, 32])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_triton_matches_float64(k, D, dtype):
    x = heavy_tailed(k, D, seed=k * 100003 + D).to(DTYPES[dtype])
    ref = cosine64(x)
    for name, data in layouts(x).items():
        cos = pairwise_cosine(data, backend="triton")
        assert cos.dtype == torch.float64 and cos.shape == (k, k)
        err = (cos - ref).abs().max().item()
        assert err <= KERNEL_TOL(D), f"{name}: max |Δcos| = {err:.3g}"
        assert torch.equal(cos, cos.T), name
        assert torch.equal(cos.diagonal(), torch.ones(k, dtype=torch.float64)), name


def test_triton_several_row_tiles_and_mixed_dtypes():
    x = heavy_tailed(130, 3000, seed=7).float()  # 130 rows: three 64-row tiles, six tile pairs
    cos = pairwise_cosine([x[:, :1000], x[:, 1000:]], backend="triton")
    assert (cos - cosine64(x)).abs().max() <= KERNEL_TOL(3000)
    mixed = [x[:8, :1500], x[:8, 1500:].bfloat16()]  # one launch per dtype, Grams summed
    ref = cosine64(torch.cat([mixed[0].double(), mixed[1].double()], 1))
    assert (pairwise_cosine(mixed, backend="triton") - ref).abs().max() <= KERNEL_TOL(3000)


def test_triton_gram_matches_float64():
    x = heavy_tailed(5, 5000, seed=3).float()
    g64 = x.double() @ x.double().T
    scale = x.double().abs() @ x.double().abs().T  # Σ_l |x_il||x_jl|: the scale of each entry's rounding error
    bound = (gram_error_bound(5000, pairwise_gram.MAX_BLOCK_D) + gamma(5000, FP64_U)) * scale  # kernel + float64 reference
    assert ((gram(x, backend="triton") - g64).abs() <= bound).all()
    assert not ((gram(x[:, 100:], backend="triton") - g64).abs() <= bound).all()  # 100 columns lost: caught


def test_torch_path_long_rows():
    "D = 2·10^7, k = 8, gradient-like rows (shared direction + noise, heavy-tailed magnitudes): within the D-independent bound."
    k, D = 8, 20_000_000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(D, generator=g).expand(k, D) + 0.7 * torch.randn(k, D, generator=g)
    x *= 10 ** (4 * torch.rand(k, D, generator=g) - 2)
    g64 = torch.zeros(k, k, dtype=torch.float64)
    for s in range(0, D, 2**21):
        block = x[:, s:s + 2**21].double()
        g64 += block @ block.T
    norm = g64.diagonal().sqrt()
    ref = g64 / (norm[:, None] * norm[None, :])
    cos = pairwise_cosine(x, backend="torch")
    assert (cos - ref).abs().max() <= TORCH_TOL(D)
    assert ref[~torch.eye(k, dtype=torch.bool)].min() > 0.05  # the rows are far from orthogonal: a real test


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_row(backend):
    x = heavy_tailed(6, 100, seed=1).float()
    x[4] = 0
    with pytest.raises(DataeffError, match="row 4 is all zero"):
        pairwise_cosine(x, backend=backend)
    cos = pairwise_cosine(x, backend=backend, allow_zero=True)
    assert cos[4].isnan().all() and cos[:, 4].isnan().all()
    keep = [0, 1, 2, 3, 5]
    assert not cos[keep][:, keep].isnan().any()
    assert median_pairwise_cosine(x, backend, allow_zero=True) == pytest.approx(
        float(np.median(cos[keep][:, keep][tuple(torch.triu_indices(5, 5, 1))].numpy())), abs=1e-15)  # the same cosines


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_median_convention(backend):
    x = heavy_tailed(4, 50, seed=2).float()  # 4 rows -> 6 pairs: numpy averages the 3rd and 4th
    cos = pairwise_cosine(x, backend)
    values = cos[tuple(torch.triu_indices(4, 4, 1))].sort().values
    assert median_pairwise_cosine(x, backend) == pytest.approx(float(values[2] + values[3]) / 2, abs=1e-15)  # same values, float64 mean
    assert median_pairwise_cosine(x, backend) != pytest.approx(float(values[2]), abs=1e-9)  # not torch.median
    x3 = x[:3]  # 3 pairs: the middle one
    middle = pairwise_cosine(x3, backend)[tuple(torch.triu_indices(3, 3, 1))].sort().values[1]
    assert median_pairwise_cosine(x3, backend) == float(middle)


def test_known_cosines():
    x = torch.tensor([[1.0, 0, 0], [1, 1, 0], [-2, 0, 0]])
    expected = torch.tensor([[1, 2**-0.5, -1], [2**-0.5, 1, -(2**-0.5)], [-1, -(2**-0.5), 1]], dtype=torch.float64)
    for backend in ("torch", "triton"):
        assert torch.allclose(pairwise_cosine(x, backend), expected, atol=1e-15)  # integer Gram exact in fp32; float64 sqrt/div: <= 4·2^-53


def test_validation():
    x = torch.randn(3, 10)
    cases = [(lambda: gram([]), "empty"), (lambda: gram(torch.randn(10)), "2-D"),
             (lambda: gram([x, torch.randn(2, 5)]), "has 2 rows but chunk 0 has 3"),
             (lambda: gram(torch.randn(0, 5)), "k = 0"), (lambda: gram(torch.randn(3, 0)), "D = 0"),
             (lambda: gram(torch.ones(3, 4, dtype=torch.int64)), "not floating point"),
             (lambda: gram("abc"), "expected a tensor"), (lambda: gram(x, backend="gpu"), "not one of"),
             (lambda: gram(x.double(), backend="triton"), "cast the gradients"),
             (lambda: median_pairwise_cosine(x[:1]), "no pair")]
    for call, message in cases:
        with pytest.raises(DataeffError, match=message):
            call()
    for backend in ("torch", "triton"):
        bad = x.clone()
        bad[2, 7] = float("nan")
        with pytest.raises(DataeffError, match="row 2: non-finite value at chunk 1, column 3"):
            gram([x[:, :4], bad[:, 4:]], backend)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # fp32 overflow (inf, inf - inf) inside the interpreted kernel, by design
def test_overflow_and_underflow_recomputed_in_float64():
    x = heavy_tailed(3, 200, seed=5).float()
    x[0] *= 1e30  # squares overflow fp32
    x[1] *= 1e-30  # squares underflow fp32
    for backend in ("torch", "triton"):
        assert (pairwise_cosine(x, backend) - cosine64(x)).abs().max() <= 4 * (2 * gamma(200, FP64_U)) + gamma(4, FP64_U)  # both float64


def test_auto_uses_torch_on_cpu():
    assert _pick_backend([torch.randn(2, 3)], "auto") == "torch"


def test_without_triton_the_torch_path_runs():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from dataeff.similarity import pairwise_cosine\n"
            "from dataeff.core import DataeffError\n"
            "print(float(pairwise_cosine(torch.eye(3))[0, 1]))\n"
            "try: pairwise_cosine(torch.eye(3), backend='triton')\n"
            "except DataeffError as e: print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == ["0.0", "backend='triton': Triton is not importable here; install triton or use backend='torch'"]


@pytest.mark.parametrize("failure, missing_triton", [
    (ModuleNotFoundError("No module named 'triton'", name="triton"), True),
    (ModuleNotFoundError("No module named 'triton.language'", name="triton.language"), True),
    (ModuleNotFoundError("No module named 'dataeff._kernels'", name="dataeff._kernels"), False),
    (ImportError("cannot import name 'knobs' from 'triton'"), False),
])
def test_only_a_missing_triton_reads_as_missing(monkeypatch, failure, missing_triton):
    "An import failure that is not Triton's absence names what failed, for backend='triton'; backend='auto' on CUDA warns and uses torch."
    import dataeff.similarity as similarity
    def fail(name):
        raise failure
    monkeypatch.setattr(similarity.importlib, "import_module", fail)
    if missing_triton:
        assert similarity._triton_kernels() is None
        with pytest.raises(DataeffError, match="Triton is not importable here"):
            _pick_backend([torch.randn(2, 3)], "triton")
        return
    with pytest.raises(DataeffError) as e:
        _pick_backend([torch.randn(2, 3)], "triton")
    assert str(failure) in str(e.value) and "not importable here" not in str(e.value)
    cuda_like = torch.randn(2, 3)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with pytest.warns(UserWarning, match="using the torch path"):
        assert _pick_backend([cuda_like], "auto") == "torch"
