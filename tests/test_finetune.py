"""`dataeff curve` on the default model (SmolLM2-135M-Instruct) with a built-in task: a short curve, its file, resuming after kill -9, and bad input.

Runs use one torch thread (in this process and in the subprocesses), which is much faster on a small shared CPU and makes
the in-process run and the subprocess runs compute with the same thread count, so their numbers can be compared exactly.
"""
import json, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from dataeff.cli import main
from dataeff.curves import load_results
from dataeff.finetune import CurveData, CurveSettings, fit_budgets

TASK = "boolean_expressions"  # short prompts; SmolLM2-135M rambles instead of answering True/False zero-shot
SHORT = ["--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "4", "--eval-every", "1", "--lr", "1e-4",
         "--eval-size", "8", "--eval-batch-size", "8", "--max-new-tokens", "4", "--seed", "0", "--quiet"]
CURVE = ["curve", TASK, "--budgets", "0,8,16", *SHORT]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    "The uninterrupted reference run, in this process: (results file, seconds it took)."
    out = tmp_path_factory.mktemp("curve")/f"smollm2-135m_{TASK}_full_result_v2.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        assert main([*CURVE, "--out", str(out)]) == 0
        yield out, time.perf_counter() - start
    finally: torch.set_num_threads(threads)


def _without_wall_time(results):
    return {b: {k: v for k, v in entry.items() if k != "wall_time"} for b, entry in results.items()}


def test_results_file_is_in_the_authors_format(measured):
    out, _ = measured
    results = json.loads(out.read_text())
    assert list(results) == ["0", "8", "16"]
    for budget, entry in results.items():
        assert 0 <= entry["accuracy"] <= 1
        assert entry["n_train"] == int(budget) and entry["n_test"] == 8
        assert entry["steps"] == (0 if budget == "0" else 2) and entry["wall_time"] > 0
    assert results["0"]["val_loss"] is None and results["8"]["n_val"] == 4
    assert load_results(out).scores == {TASK: {b: results[str(b)]["accuracy"] for b in (0, 8, 16)}}


def test_training_lowers_the_validation_loss_on_a_task_missed_zero_shot(measured):
    results = json.loads(measured[0].read_text())
    assert results["0"]["accuracy"] < 0.5  # the model gets the task wrong zero-shot
    for budget in ("8", "16"):
        entry = results[budget]
        assert entry["best_step"] > 0, "no step improved the validation loss"
        assert entry["val_loss"] < 0.8 * entry["initial_val_loss"], entry


def test_dataeff_auc_reads_the_file_and_more_budgets_extend_it(measured, tmp_path, capsys):
    "Budgets below 50 are outside the metric, so add budget 50 (the finished budgets are skipped) and read the file with `dataeff auc`."
    out = tmp_path/measured[0].name
    shutil.copy(measured[0], out)
    before = json.loads(out.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: assert main(["curve", TASK, "--budgets", "0,8,16,50", *SHORT, "--out", str(out)]) == 0
    finally: torch.set_num_threads(threads)
    after = json.loads(out.read_text())
    assert list(after) == ["0", "8", "16", "50"] and {b: after[b] for b in before} == before
    human = tmp_path/"human_eval.json"
    human.write_text(json.dumps({TASK: {"score": 1.0}}))
    capsys.readouterr()
    assert main(["auc", str(out), "--human-eval", str(human), "--json", str(tmp_path/"auc.json")]) == 0
    assert TASK in capsys.readouterr().out
    assert 0 <= json.loads((tmp_path/"auc.json").read_text())[TASK]["auc"] <= 1


def test_a_run_killed_at_a_random_moment_resumes_to_the_same_file(measured, tmp_path):
    reference, took = measured
    out = tmp_path/"resumed.json"
    command = [sys.executable, "-m", "dataeff.cli", *CURVE, "--out", str(out)]
    run = subprocess.Popen(command, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20 * took + 120
    while not out.exists() and run.poll() is None and time.monotonic() < deadline: time.sleep(0.2)
    time.sleep(random.Random(7).uniform(0, 0.6 * took))  # somewhere in the fine-tuning of the later budgets
    assert run.poll() is None, "the run ended before it could be killed"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    partial = json.loads(out.read_text())  # what a kill -9 leaves is a whole file of the finished budgets
    assert set(partial) < {"0", "8", "16"}, partial
    rerun = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=20 * took + 300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _without_wall_time(json.loads(out.read_text())) == _without_wall_time(json.loads(reference.read_text()))


def _fails(capsys, argv, expected):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dataeff curve: error:") and expected in err, err


@pytest.fixture
def labelled(tmp_path):
    "A labelled file of 20 examples: 4 held out as test set, 16 in the pool."
    path = tmp_path/"pool.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "input": f"What is {i} plus one?", "target": str(i + 1)}) + "\n" for i in range(20)))
    return path


def test_budget_larger_than_the_labelled_data_is_refused_or_capped(capsys, labelled, tmp_path):
    _fails(capsys, ["curve", str(labelled), "--budgets", "0,16", "--out", str(tmp_path/"r.json")], "--cap-budgets")
    assert not (tmp_path/"r.json").exists()
    pool = CurveData("pool", list(range(16)), [])
    assert fit_budgets([0, 8, 16], pool, CurveSettings(), cap=True) == [0, 8, 12]  # 12 training + 4 validation = 16


@pytest.mark.parametrize("budgets, expected", [("0,8,8", "listed twice"), ("0,-8", "negative"), ("0,eight", "whole numbers")])
def test_bad_budgets(capsys, budgets, expected, tmp_path):
    _fails(capsys, ["curve", TASK, "--budgets", budgets, "--out", str(tmp_path/"r.json")], expected)


def test_unwritable_output(capsys, tmp_path):
    (tmp_path/"a-file").write_text("")
    _fails(capsys, ["curve", TASK, "--budgets", "0", "--out", str(tmp_path/"a-file"/"r.json")], "cannot write results here")
    _fails(capsys, ["curve", TASK, "--budgets", "0", "--out", str(tmp_path)], "is a folder")


def test_test_set_overlapping_the_training_data_is_refused(capsys, labelled, tmp_path):
    test = tmp_path/"test.jsonl"
    test.write_text(json.dumps({"id": "t0", "input": "What is 3 plus one?", "target": "4"}) + "\n")
    _fails(capsys, ["curve", str(labelled), "--test", str(test), "--budgets", "0,8", "--out", str(tmp_path/"r.json")], "same input as training example id 'q3'")


def test_results_file_of_other_settings_is_not_mixed(capsys, measured, tmp_path):
    out = tmp_path/"r.json"
    shutil.copy(measured[0], out)
    _fails(capsys, ["curve", TASK, "--budgets", "0,8,16", *SHORT, "--lr", "2e-4", "--out", str(out)], "measured with other settings")


def test_two_processes_measure_the_same_curve_as_one(tmp_path):
    "DDP over two CPU processes (gloo) against one process, with a small random Llama saved to disk: the same curve up to float rounding."
    from dataeff.models import fp32_rounding_bound, tiny_model
    model, tokenizer = tiny_model(hidden_size=64)
    model.save_pretrained(tmp_path/"tiny"); tokenizer.save_pretrained(tmp_path/"tiny")
    args = ["curve", TASK, "--model", str(tmp_path/"tiny"), "--budgets", "0,50", "--max-steps", "6", "--batch-size", "8", "--micro-batch-size", "3",
            "--eval-every", "3", "--lr", "3e-3", "--eval-size", "16", "--eval-batch-size", "4", "--max-new-tokens", "4", "--quiet"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: assert main([*args, "--out", str(tmp_path/"one.json")]) == 0
    finally: torch.set_num_threads(threads)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dataeff.cli", *args,
                          "--out", str(tmp_path/"two.json")], env={**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    one, two = json.loads((tmp_path/"one.json").read_text()), json.loads((tmp_path/"two.json").read_text())
    for budget in ("0", "50"):
        assert (one[budget]["processes"], two[budget]["processes"]) == (1, 2)
        assert one[budget]["steps"] == two[budget]["steps"] and one[budget]["n_test"] == two[budget]["n_test"] == 16
        assert abs(one[budget]["accuracy"] - two[budget]["accuracy"]) <= 1 / 16  # a greedy near-tie may flip one of the 16 answers
    # one or two processes: the same arithmetic up to summation order (gradient all-reduce, micro-batch split); the
    # trained loss sits at the end of 6 steps of forward + backward and one forward (13 passes; AdamW's m/√v passes a
    # relative gradient change through unamplified where |g| >> eps), the initial one after a single forward pass
    assert two["50"]["val_loss"] == pytest.approx(one["50"]["val_loss"], rel=fp32_rounding_bound(model.config, passes=2 * 6 + 1))
    assert two["50"]["initial_val_loss"] == pytest.approx(one["50"]["initial_val_loss"], rel=fp32_rounding_bound(model.config))
    assert two["50"]["val_loss"] < 0.9 * two["50"]["initial_val_loss"]


def test_settings_are_checked_when_made_and_taken_positionally_or_as_keywords(tiny, tmp_path):
    "`CurveSettings` checks itself when made; `run_curve` takes it positionally, or its fields as keywords, to the same measured point."
    from dataeff.core import DataeffError
    from dataeff.finetune import run_curve
    with pytest.raises(DataeffError, match="--max-steps 0: must be a whole number of at least 1"): CurveSettings(max_steps=0)
    with pytest.raises(DataeffError, match="--lora-alpha 0.0: LoRA alpha must be positive"): CurveSettings(lora_alpha=0.0)
    assert isinstance(CurveSettings().lora_alpha, float)
    settings = CurveSettings(eval_size=4, eval_batch_size=4, max_new_tokens=2)
    given = run_curve(TASK, tiny, [0], tmp_path/"given.json", settings, progress=False)  # budget 0: the zero-shot point, no training
    assert list(given) == ["0"] and given["0"]["n_test"] == 4 and json.loads((tmp_path/"given.json").read_text()) == given
    flat = run_curve(TASK, tiny, [0], tmp_path/"flat.json", eval_size=4, eval_batch_size=4, max_new_tokens=2, progress=False)
    assert flat["0"]["fingerprint"] == given["0"]["fingerprint"] and flat["0"]["accuracy"] == given["0"]["accuracy"]
    with pytest.raises(TypeError, match="'settings'"): run_curve(TASK, tiny, [0], tmp_path/"x.json", settings=settings)
