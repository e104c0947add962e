"""Benchmark: all pairwise cosines of k LoRA-B gradients, ours vs a per-pair loop and a plain fp32 GEMM.

Inputs are shaped like real per-example LoRA-B gradients (rank 64; LoRA-B of Linear(in, out) is out × 64) for the
q, k, v, o, gate, up, down projections of every layer, held as one k × (out·64) chunk per tensor. Timed side by side:
  ours     dataeff.similarity.pairwise_cosine(chunks)  (Triton on CUDA, the blocked torch path on CPU)
  loop     the authors' approach: for every pair, for every layer, dot products of the two examples' tensors
  gemm     fp32 F.normalize(X) @ F.normalize(X).T on the pre-concatenated X (concatenation not timed)
  read     the floor: torch.sum over every chunk (reading the k·D input once)
and each result's max |Δcos| against float64. On CUDA also GB/s and the fraction of HBM bandwidth.

    python kernels/bench_pairwise_cosine.py                  # CPU: default model, k = 32, fp32
    python kernels/bench_pairwise_cosine.py --device cuda    # GPU: default model and Llama-3.1-8B, fp32 and bf16
"""
import argparse
import time

import torch
import torch.nn.functional as F

from dataeff.similarity import pairwise_cosine

MODELS = {  # layers, hidden, kv width (k/v projection out), mlp width
    "SmolLM2-135M (default)": (30, 576, 192, 1536),
    "Llama-3.1-8B": (32, 4096, 1024, 14336),
}
RANK = 64
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def lora_b_widths(layers, hidden, kv, mlp):
    "(name, out·rank) for the LoRA-B tensor of each projection of each layer."
    outs = {"q": hidden, "k": kv, "v": kv, "o": hidden, "gate": mlp, "up": mlp, "down": hidden}
    return [(f"layers.{i}.{p}", out * RANK) for i in range(layers) for p, out in outs.items()]


def make_chunks(widths, k, dtype, device, seed=0):
    "One k × width chunk per LoRA tensor: gradient-like rows (a shared direction plus per-example noise)."
    g = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    for _, w in widths:
        c = torch.randn(1, w, generator=g, device=device, dtype=torch.float32).expand(k, w).clone()
        c.add_(torch.randn(k, w, generator=g, device=device, dtype=torch.float32), alpha=2.0)
        c.mul_(1e-3)
        chunks.append(c.to(dtype))
    return chunks


def per_pair_loop(grads):
    "The authors' approach: grads is a list of {name: tensor} dicts; every pair, every layer, in Python."
    k = len(grads)
    cos = torch.eye(k, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            dot = norm_i = norm_j = 0.0
            for name in grads[i]:
                a, b = grads[i][name].flatten(), grads[j][name].flatten()
                dot += torch.dot(a, b).item()
                norm_i += torch.dot(a, a).item()
                norm_j += torch.dot(b, b).item()
            cos[i, j] = cos[j, i] = dot / (norm_i * norm_j) ** 0.5
    return cos


def float64_cosine(chunks):
    k = chunks[0].shape[0]
    g = torch.zeros(k, k, dtype=torch.float64, device=chunks[0].device)
    for c in chunks:
        c = c.double()
        g += c @ c.T
    n = g.diagonal().sqrt()
    return (g / (n[:, None] * n[None, :])).cpu()


def timed(fn, device, repeat, warmup=True):
    "Best wall time of `repeat` runs after one warm-up run (autotuning, allocator), and the last result."
    out = fn() if warmup else None
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda": torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench(model, k, dtype, device, repeat, loop_repeat):
    widths = lora_b_widths(*MODELS[model])
    chunks = make_chunks(widths, k, dtype, device)
    D = sum(w for _, w in widths)
    nbytes = k * D * chunks[0].element_size()
    print(f"\n== {model}: k = {k}, D = {D:,} ({len(widths)} LoRA-B tensors), {dtype}, {device.type}: input {nbytes / 1e9:.2f} GB")
    ref = float64_cosine(chunks)
    err = lambda cos: (cos.cpu().double() - ref).abs().max().item()

    t_read, _ = timed(lambda: [c.sum() for c in chunks], device, repeat)
    t_ours, cos_ours = timed(lambda: pairwise_cosine(chunks), device, repeat)
    grads = [{name: c[i].view(-1, RANK) for (name, _), c in zip(widths, chunks)} for i in range(k)]
    t_loop, cos_loop = timed(lambda: per_pair_loop(grads), device, loop_repeat, warmup=False)  # minutes on CPU
    del grads
    x = torch.cat(chunks, dim=1)
    del chunks

    def gemm():
        xn = F.normalize(x.float(), dim=1)
        return xn @ xn.T
    t_gemm, cos_gemm = timed(gemm, device, repeat)
    del x

    rows = [("read floor (sum)", t_read, None), ("ours pairwise_cosine", t_ours, err(cos_ours)),
            ("(a) per-pair loop", t_loop, err(cos_loop)), ("(b) fp32 normalize+GEMM", t_gemm, err(cos_gemm))]
    for name, t, e in rows:
        print(f"  {name:26s} {t * 1e3:10.2f} ms   {nbytes / t / 1e9:8.1f} GB/s   max|Δcos| {'-' if e is None else f'{e:.2e}'}")
    print(f"  ours vs (a) loop: {t_loop / t_ours:.1f}x faster;  vs (b) GEMM: {t_gemm / t_ours:.2f}x;  "
          f"ours / read floor: {t_ours / t_read:.2f}x")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for key, v in HBM_BYTES_PER_S.items() if key in name), None)
        if peak:
            print(f"  ours: {nbytes / t_ours / 1e9:.0f} GB/s = {nbytes / t_ours / peak:.0%} of {name} HBM ({peak / 1e12:.2f} TB/s)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":  # CPU: the default model in fp32 (~1.3 GB at k = 32); 8B shapes do not fit in RAM here
        bench("SmolLM2-135M (default)", args.k, torch.float32, device, args.repeat, loop_repeat=1)
        return
    for model in MODELS:
        for dtype in (torch.bfloat16, torch.float32):
            bench(model, args.k, dtype, device, args.repeat, loop_repeat=1)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
