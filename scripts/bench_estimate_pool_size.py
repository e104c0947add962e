"""Benchmark: `dataeff estimate` on generated pools of growing size, with the default model and the default --max-pool.

The pools (1,000, 10,000 and 100,000 labelled examples of a built-in task with varied inputs, by default `object_counting`) are
written first; then each is estimated in its own fresh process, one after another in this one run, as a user runs the command.
Prints the wall time of each run, its ratio to the smallest pool's, how many examples it scored, and its stages. With a bounded
sample the cost should stay flat once the pool is larger than --max-pool (the goal: at most 1.2x from 10,000 to 100,000).
Usage: python scripts/bench_estimate_pool_size.py [--sizes 1000,10000,100000] [--task object_counting] [--work DIR] [-- extra estimate options]"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
from dataeff.confidence import DEFAULT_MAX_POOL
from dataeff.data import write_examples
from dataeff.tasks import TASKS, make_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="pool sizes, comma-separated (default 1000,10000,100000)")
    parser.add_argument("--task", default="object_counting", choices=TASKS, help="built-in task the pools are drawn from (default object_counting)")
    parser.add_argument("--work", help="folder for the pools and the estimate folders (default: a new temporary folder)")
    parser.add_argument("extra", nargs="*", help="more options for dataeff estimate, after --")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-pool-size-"))
    largest = make_task(args.task, sizes[-1], seed=0)  # every pool is a prefix of the largest: the same kind of examples
    for n in sizes: write_examples(work/f"pool-{n}.jsonl", largest[:n])
    print(f"{args.task} pools of {', '.join(f'{n:,}' for n in sizes)} examples in {work}; default --max-pool {DEFAULT_MAX_POOL:,}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    rows = []
    for n in sizes:
        out = work/f"estimate-{n}"
        command = [sys.executable, "-m", "dataeff.cli", "estimate", str(work/f"pool-{n}.jsonl"), "--out", str(out), "--borrow-calibration", "--quiet", *args.extra]
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0: sys.exit(f"pool of {n:,}: dataeff estimate failed:\n{run.stderr[-3000:]}")
        report = json.loads((out/"report.json").read_text())
        rows.append((n, seconds, report["n_scored"], report["timings"]))
        print(f"pool {n:>9,}: {seconds:8.1f} s, scored {report['n_scored']:,}; stages (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()), flush=True)
    base = rows[0][1]
    print("\npool size   wall (s)   ratio to the smallest   scored")
    for n, seconds, scored, _ in rows: print(f"{n:>9,}  {seconds:9.1f}  {seconds / base:22.2f}  {scored:>7,}")
    if len(rows) > 1:
        (n1, s1, *_), (n2, s2, *_) = rows[-2], rows[-1]
        print(f"from {n1:,} to {n2:,} examples: {s2 / s1:.2f}x the wall time")


if __name__ == "__main__":
    main()
