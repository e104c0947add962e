"""Benchmark: `dataeff score` in one process against two processes under torchrun, one thread each, side by side in one run.

The default model scores N generated examples (the whole pool: --max-pool 0) first in one process, then in two (torchrun,
CPU processes over gloo), each with OMP_NUM_THREADS=1, as a user would launch them: the wall times include starting Python
and loading the model. Prints both times, their ratio, and how far the two score files differ.
Usage: python scripts/bench_score_processes.py [--n 200] [--task object_counting] [--repeats 1] [--work DIR]"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
from dataeff.data import write_examples
from dataeff.tasks import TASKS, make_task


def timed(command, env):
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    if run.returncode != 0: sys.exit(f"{' '.join(command[:6])} ... failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="examples to score (default 200)")
    parser.add_argument("--task", default="object_counting", choices=TASKS)
    parser.add_argument("--work", help="folder for the pool and the score files (default: a new temporary folder)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, interleaved; the medians are compared (default 1)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-score-processes-"))
    write_examples(work/"pool.jsonl", make_task(args.task, args.n, seed=0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    score = ["-m", "dataeff.cli", "score", str(work/"pool.jsonl"), "--max-pool", "0"]
    print(f"{args.n} {args.task} examples, the default model, one thread per process, {args.repeats} run(s) of each, interleaved", flush=True)
    ones, twos = [], []
    for r in range(args.repeats):
        for f in ("one.jsonl", "two.jsonl"): (work/f).unlink(missing_ok=True)
        ones.append(timed([sys.executable, *score, "--out", str(work/"one.jsonl")], env))
        twos.append(timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *score, "--out", str(work/"two.jsonl")], env))
        print(f"run {r + 1}: one process {ones[-1]:7.1f} s, two processes {twos[-1]:7.1f} s", flush=True)
    one, two = statistics.median(ones), statistics.median(twos)
    a, b = ([json.loads(line) for line in (work/f).read_text().splitlines()] for f in ("one.jsonl", "two.jsonl"))
    same_ids = [r["id"] for r in a] == [r["id"] for r in b]
    answers = sum(x["answer"] == y["answer"] for x, y in zip(a, b))
    diff = max(abs(x["avg_confidence"] - y["avg_confidence"]) for x, y in zip(a, b))
    print(f"median: one process {one:.1f} s, two processes {two:.1f} s")
    print(f"two processes took {two / one:.2f}x the time of one ({one / two:.2f}x faster); same ids in the same order: {same_ids}; "
          f"identical answers {answers}/{len(a)}; max |avg_confidence difference| {diff:.1e}")


if __name__ == "__main__":
    main()
