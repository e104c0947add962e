"""Triton kernel: the raw Gram matrix X·Xᵀ of k long rows (k tiny, D huge), reading X once; no fp32 sum runs over more than BLOCK_D terms.

X arrives as a list of column chunks (one k × d_l block per LoRA tensor), each with any row stride. The columns of
all chunks are cut into segments; one program per (segment, row-tile pair) streams its segment in BLOCK_D-wide
blocks, multiplies them on the tensor cores into an fp32 tile and folds each block product into a compensated
(TwoSum) fp32 accumulator. Each program writes its partial Gram as float64; the partials are summed in float64.
All offsets are 64-bit. See README.md in this folder for the design and measurements.
"""
import math

import torch
import triton
import triton.language as tl
from triton import knobs

INTERPRET = bool(knobs.runtime.interpret)  # fixed when this module is imported, like triton.jit itself
MAX_BLOCK_K = 64  # rows per tile; k above this is split into row tiles (a tile pair re-reads its two row blocks)
PARTIALS_BUDGET_BYTES = 64 * 2**20  # cap on the float64 partial-Gram buffer (number of segments × tiles)
SEGMENT_ALIGN = 1024  # segment lengths are multiples of this (so 16-byte alignment of segment starts is preserved)


# the interpreter runs programs one by one in numpy: one wide block, nothing to tune
BLOCK_DS = (1024,) if INTERPRET else (64, 128, 256)
MAX_BLOCK_D = max(BLOCK_DS)  # the longest fp32 sum the kernel runs: its accuracy bound (see dataeff.similarity.gram_error_bound)


def _configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_D": bd}, num_warps=4) for bd in BLOCK_DS]
    return [triton.Config({"BLOCK_D": bd}, num_warps=w, num_stages=s)
            for bd in BLOCK_DS for w in (4, 8) for s in (2, 3, 4)]


@triton.autotune(configs=_configs(), key=["K", "BLOCK_K", "SINGLE_TILE", "ALIGNED", "UPCAST"], cache_results=True)
@triton.jit
def gram_partials_kernel(x0_ptr, work_ptr, pairs_ptr, out_ptr, K, n_pairs,
                         BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_TILE: tl.constexpr,
                         ALIGNED: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Program (segment s, tile pair p) writes out[s, p] = X[rows_i, seg] · X[rows_j, seg]ᵀ (float64, BLOCK_K²).

    work[s] = (element offset of the segment's chunk from x0, chunk row stride, first column, end column);
    pairs[p] = (row tile i, row tile j) with i <= j.
    """
    seg = tl.program_id(0)
    pair = tl.program_id(1)
    w = work_ptr + seg.to(tl.int64) * 4
    base = tl.load(w)
    row_stride = tl.load(w + 1)
    col_start = tl.load(w + 2)
    col_end = tl.load(w + 3)
    if ALIGNED:  # host checked: chunk starts, row strides and segment starts are 16-byte aligned
        base = tl.multiple_of(base, 16)
        row_stride = tl.multiple_of(row_stride, 16)
        col_start = tl.multiple_of(col_start, 16)
    tile_i = tl.load(pairs_ptr + pair * 2)
    tile_j = tl.load(pairs_ptr + pair * 2 + 1)

    rows_i = tile_i * BLOCK_K + tl.arange(0, BLOCK_K)
    rows_j = tile_j * BLOCK_K + tl.arange(0, BLOCK_K)
    ptr_i = x0_ptr + base + rows_i.to(tl.int64)[:, None] * row_stride
    ptr_j = x0_ptr + base + rows_j.to(tl.int64)[:, None] * row_stride
    live_i = (rows_i < K)[:, None]
    live_j = (rows_j < K)[:, None]

    acc = tl.zeros((BLOCK_K, BLOCK_K), dtype=tl.float32)
    comp = tl.zeros((BLOCK_K, BLOCK_K), dtype=tl.float32)  # running rounding error of acc (TwoSum)
    for start in range(col_start, col_end, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        if ALIGNED:
            cols = tl.max_contiguous(tl.multiple_of(cols, 16), BLOCK_D)
        in_seg = (cols < col_end)[None, :]
        a = tl.load(ptr_i + cols[None, :], mask=live_i & in_seg, other=0.0, eviction_policy="evict_first")
        if SINGLE_TILE:
            b = a
        else:
            b = tl.load(ptr_j + cols[None, :], mask=live_j & in_seg, other=0.0, eviction_policy="evict_first")
        if UPCAST:  # fp16/bf16 -> fp32 is exact; needed where the dot cannot take half precision (interpreter)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        block = tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION, out_dtype=tl.float32)
        total = acc + block  # TwoSum: total + err == acc + block exactly
        block_part = total - acc
        err = (acc - (total - block_part)) + (block - block_part)
        comp += err
        acc = total

    tile = acc.to(tl.float64) + comp.to(tl.float64)
    r = tl.arange(0, BLOCK_K)
    out = out_ptr + (seg.to(tl.int64) * n_pairs + pair) * (BLOCK_K * BLOCK_K)
    tl.store(out + r[:, None] * BLOCK_K + r[None, :], tile)


def _segment_length(total_cols, n_pairs, block_k, device):
    "Columns per program: enough programs to fill the device, few enough that the float64 partials stay small."
    if INTERPRET:
        target, minimum = 4, SEGMENT_ALIGN
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target, minimum = max(1, 8 * sms // n_pairs), 4 * SEGMENT_ALIGN
    max_segments = max(1, PARTIALS_BUDGET_BYTES // (n_pairs * block_k * block_k * 8))
    seg = max(minimum, math.ceil(total_cols / min(target, max_segments)))
    return math.ceil(seg / SEGMENT_ALIGN) * SEGMENT_ALIGN


def _launch(chunks, k, block_k, pairs, into):
    "Gram partials of chunks that share one dtype, summed over segments: (n_pairs, BLOCK_K, BLOCK_K) float64."
    x0 = chunks[0]
    device, esize = x0.device, x0.element_size()
    total_cols = sum(c.shape[1] for c in chunks)
    seg_len = _segment_length(total_cols, len(pairs), block_k, device)
    work, aligned = [], True
    for c in chunks:
        delta = c.data_ptr() - x0.data_ptr()
        assert delta % esize == 0, "chunks of one dtype must be element-aligned"
        base, row_stride = delta // esize, c.stride(0) if k > 1 else 0
        aligned &= (c.data_ptr() % 16 == 0) and (row_stride * esize % 16 == 0)
        for start in range(0, c.shape[1], seg_len):
            work.append((base, row_stride, start, min(start + seg_len, c.shape[1])))
    aligned &= seg_len * esize % 16 == 0
    work_t = torch.tensor(work, dtype=torch.int64, device=device)
    pairs_t = torch.tensor(pairs, dtype=torch.int32, device=device)
    out = torch.empty((len(work), len(pairs), block_k, block_k), dtype=torch.float64, device=device)
    upcast = INTERPRET
    precision = "ieee" if (x0.dtype == torch.float32 or upcast) else "tf32"  # half inputs: products exact anyway
    gram_partials_kernel[(len(work), len(pairs))](
        x0, work_t, pairs_t, out, k, len(pairs), BLOCK_K=block_k, SINGLE_TILE=len(pairs) == 1,
        ALIGNED=aligned, UPCAST=upcast, DOT_PRECISION=precision)
    into += out.sum(0)


SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def gram_triton(chunks):
    """Raw Gram matrix (k × k float64, on the chunks' device) of the row-wise concatenation of `chunks`.

    `chunks`: non-empty list of 2-D tensors with the same number of rows k, dtypes in SUPPORTED_DTYPES, on one
    device (CUDA, or CPU under TRITON_INTERPRET=1). Rows may have any stride; a chunk whose columns are not
    contiguous is copied. Inputs are not validated beyond that: `dataeff.similarity.gram` does it.
    """
    k = chunks[0].shape[0]
    block_k = max(16, min(MAX_BLOCK_K, triton.next_power_of_2(k)))  # tl.dot needs tiles of at least 16
    n_tiles = math.ceil(k / block_k)
    pairs = [(i, j) for i in range(n_tiles) for j in range(i, n_tiles)]
    acc = torch.zeros((len(pairs), block_k, block_k), dtype=torch.float64, device=chunks[0].device)
    by_dtype = {}
    for c in chunks:
        if c.shape[1] == 0:
            continue
        if c.shape[1] > 1 and c.stride(1) != 1:
            c = c.contiguous()
        by_dtype.setdefault(c.dtype, []).append(c)
    for group in by_dtype.values():
        _launch(group, k, block_k, pairs, acc)
    gram = torch.zeros((n_tiles * block_k, n_tiles * block_k), dtype=torch.float64, device=acc.device)
    for p, (i, j) in enumerate(pairs):
        gram[i * block_k:(i + 1) * block_k, j * block_k:(j + 1) * block_k] = acc[p]
    gram = gram[:k, :k]
    upper = torch.triu(gram)
    return upper + torch.triu(gram, 1).T  # mirror the upper triangle: exactly symmetric
