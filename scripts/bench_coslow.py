#!/usr/bin/env python
"""Benchmark the CoS-Low step on the authors' 32 annotated circa prompts with the default model, side by side in one run.

Each procedure runs in its own fresh process (so its peak memory is its own), one after another:
  fwdbwd      32 one-at-a-time forward+backward passes of the LoRA model (transformers `labels` loss), nothing else
  authors     the authors' procedure: those passes + a per-example dict of cloned lora_B gradients + a per-pair, per-layer cosine loop
  sequential  dataeff, one example per backward pass, gradients streamed into the chunk buffer, cosines, bootstrap
  batched     dataeff.coslow.compute_coslow (batched per-example gradients from hooks), baselines off
Prints wall (and CPU) times, their ratios, and peak resident memory above the warmed-up model process
against the allowance k·D·4 bytes + 1 GiB. `--repeats R` runs the four parts R times, interleaved, and reports medians.
Every part runs with the same number of torch threads (`--threads`, default 1: on a small machine shared with other jobs a
second thread mostly waits for a free core, which penalises many-small-op code unevenly and makes the ratios noisy).

    python scripts/bench_coslow.py [--model smollm2-135m] [--n 32] [--grad-batch-size 2] [--threads 1] [--repeats 1]
"""
import argparse, json, statistics, subprocess, sys, time


def _rss_gb():
    "(current, peak) resident set size of this process in GB, from /proc."
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmRSS"].split()[0]) / 1e6, int(status["VmHWM"].split()[0]) / 1e6


def _part(name, model_name, n, batch_size, threads):
    import numpy as np, torch
    torch.set_num_threads(threads)
    from dataeff.paper import paper_data
    from dataeff.data import read_pool
    from dataeff.models import load_model, encode_example
    from dataeff.gradients import LoraSpec, add_lora, per_example_gradients, lora_tensors
    from dataeff.coslow import compute_coslow, median_upper_pairs, bootstrap_interval
    from dataeff.similarity import pairwise_cosine
    examples = read_pool(paper_data() / "results/coslow_data/low_conf_examples_annotated.json")[:n]
    model, tokenizer = load_model(model_name, device="cpu")
    encoded = [encode_example(tokenizer, ex) for ex in examples]
    with torch.no_grad(): model(torch.tensor([encoded[0]["input_ids"]]))  # touch every weight (safetensors are memory-mapped)
    base_rss, _ = _rss_gb()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak
    start, start_cpu = time.perf_counter(), time.process_time()
    if name == "batched":
        report = compute_coslow(model, tokenizer, examples, seed=0, grad_batch_size=batch_size, baselines=False, progress=False)
        coslow, dim = report.coslow, report.gradient_dim
    else:
        peft_model = add_lora(model, LoraSpec(), seed=0)
        if name == "sequential":
            grads = per_example_gradients(peft_model, encoded, [ex.id for ex in examples], method="sequential", progress=False)
            cosine = pairwise_cosine(grads.chunks).numpy()
            coslow, dim = median_upper_pairs(cosine), grads.dim
            bootstrap_interval(cosine, 1000, 0)
        else:
            kept = [(n_, w) for n_, _, _, w in lora_tensors(peft_model)]
            dim, per_example = sum(w.numel() for _, w in kept), []
            for enc in encoded:
                input_ids = torch.tensor([enc["input_ids"]])
                labels = torch.full_like(input_ids, -100)
                labels[0, enc["answer_start"]:enc["answer_end"]] = input_ids[0, enc["answer_start"]:enc["answer_end"]]
                peft_model(input_ids=input_ids, labels=labels).loss.backward()
                if name == "authors": per_example.append({n_: w.grad.detach().clone() for n_, w in kept})
                for p in peft_model.parameters(): p.grad = None
            if name == "authors":
                cosines = []
                for i in range(len(per_example)):
                    for j in range(i + 1, len(per_example)):
                        dot = norm_i = norm_j = 0.0
                        for key in per_example[i]:
                            a, b = per_example[i][key].flatten(), per_example[j][key].flatten()
                            dot += float(a @ b); norm_i += float(a @ a); norm_j += float(b @ b)
                        cosines.append(dot / (norm_i ** 0.5 * norm_j ** 0.5))
                coslow = float(np.median(cosines))
            else: coslow = None
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    _, peak = _rss_gb()
    print(json.dumps(dict(part=name, seconds=seconds, cpu_seconds=cpu_seconds, base_rss_gb=base_rss, peak_rss_gb=peak, coslow=coslow, dim=dim, k=len(examples),
                          model_gb=sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--grad-batch-size", type=int, default=2, help="examples per batched backward pass of dataeff's path (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every part (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="run the four parts this many times, interleaved; report medians")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part: return _part(args.part, args.model, args.n, args.grad_batch_size, args.threads)
    names, runs = ("fwdbwd", "authors", "sequential", "batched"), []
    for repeat in range(args.repeats):
        results = {}
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--part", name, "--model", args.model, "--n", str(args.n),
                                  "--grad-batch-size", str(args.grad_batch_size), "--threads", str(args.threads)], capture_output=True, text=True)
            if out.returncode: sys.exit(f"part {name} failed:\n{out.stderr[-3000:]}")
            results[name] = r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"run {repeat + 1} {name:>10}: {r['seconds']:7.1f} s wall, {r['cpu_seconds']:7.1f} s CPU, peak RSS {r['peak_rss_gb']:.2f} GB "
                  f"(base {r['base_rss_gb']:.2f} GB)" + (f", CoS-Low {r['coslow']:.6f}" if r["coslow"] is not None else ""), flush=True)
        runs.append(results)
    median = lambda name, key: statistics.median(run[name][key] for run in runs)
    t, cpu = ({name: median(name, key) for name in names} for key in ("seconds", "cpu_seconds"))
    b = runs[0]["batched"]
    allowed = b["k"] * b["dim"] * 4 / 1e9 + 2**30 / 1e9
    print(f"medians of {args.repeats} run(s), {args.threads} thread(s), k = {b['k']}, D = {b['dim']}, batch size {args.grad_batch_size}:")
    for name in names: print(f"  {name:>10}: {t[name]:7.1f} s wall, {cpu[name]:7.1f} s CPU")
    print(f"overhead, one-at-a-time (sequential / fwdbwd): {t['sequential'] / t['fwdbwd']:.2f}x wall, {cpu['sequential'] / cpu['fwdbwd']:.2f}x CPU   (target <= 1.2)")
    print(f"overhead, batched (batched / fwdbwd):         {t['batched'] / t['fwdbwd']:.2f}x wall, {cpu['batched'] / cpu['fwdbwd']:.2f}x CPU")
    print(f"speed-up vs authors' procedure (authors / batched): {t['authors'] / t['batched']:.2f}x wall, {cpu['authors'] / cpu['batched']:.2f}x CPU   (target >= 2)")
    print(f"peak memory above the loaded model process (model {b['model_gb']:.2f} GB, base RSS {b['base_rss_gb']:.2f} GB); "
          f"allowed k*D*4 + 1 GiB = {allowed:.2f} GB:")
    for name in names:
        extra = median(name, "peak_rss_gb") - median(name, "base_rss_gb")
        print(f"  {name:>10}: {extra:.2f} GB ({'within' if extra <= allowed else 'OVER'} the allowance by {abs(allowed - extra):.2f} GB)")
    last = runs[-1]
    print(f"CoS-Low agreement: authors {last['authors']['coslow']:.6f}, sequential {last['sequential']['coslow']:.6f}, batched {last['batched']['coslow']:.6f}")


if __name__ == "__main__":
    main()
