import json, os, subprocess, sys
import pytest
import dataeff
from dataeff.core import DataeffError
from dataeff.data import Example, write_examples
from dataeff.pipeline import EstimateReport, estimate, demo
from dataeff.tasks import make_task
from dataeff.cli import main
from dataeff.plan import PLAN_BUDGETS


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    "The tiny model saved to a folder, loadable by name like any local model."
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model, tokenizer = tiny
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fast(tiny_folder):
    "Small settings for the tiny model, which has no calibration of its own: it borrows the Llama one."
    return dict(model=str(tiny_folder), k=4, lora_r=8, lora_alpha=16, resamples=200, progress=False, borrow_calibration=True)


def labelled_pool(path, n=40):
    write_examples(path, make_task("object_counting", n, seed=0))
    return path


def without_run_details(report: dict) -> dict:
    "The report minus what may differ between runs in different folders: timings (the report's and its CoS-Low's) and paths."
    kept = {k: v for k, v in report.items() if k not in ("timings", "files", "out", "pool")}
    return {**kept, "coslow": {k: v for k, v in kept["coslow"].items() if k != "timings"}}


def test_top_level_api_is_the_pipeline():
    assert dataeff.estimate is estimate and dataeff.demo is demo
    with pytest.raises(AttributeError): dataeff.no_such_thing


def test_report_json_equals_the_returned_report_and_markdown(tmp_path, fast):
    report = estimate(labelled_pool(tmp_path / "pool.jsonl"), out=tmp_path / "out", target=[0.5, 0.9], **fast)
    assert isinstance(report, EstimateReport) and report.status == "complete"
    assert json.loads((tmp_path / "out/report.json").read_text()) == json.loads(json.dumps(report.to_dict()))
    assert (tmp_path / "out/report.md").read_text() == report.markdown()
    assert (tmp_path / "out/curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = report.prediction
    assert p.targets == [0.5, 0.9] and p.budgets[0] < p.budgets[1]
    for (lo, hi), b in zip(p.budget_intervals, p.budgets): assert lo <= b <= hi
    md = report.markdown()
    for text in ("CoS-Low", "AUC'", "cos_sim_k", "grad_norm_k", "conf_avg_k", "zero-shot accuracy", "llama-3.1-8b", "borrowed"):
        assert text in md, text


def test_same_inputs_give_the_same_report_in_a_fresh_folder(tmp_path, fast):
    pool = labelled_pool(tmp_path / "pool.jsonl")
    a = estimate(pool, out=tmp_path / "a", **fast).to_dict()
    b = estimate(pool, out=tmp_path / "b", **fast).to_dict()
    assert without_run_details(a) == without_run_details(b)


def test_changed_labels_recompute_coslow_instead_of_reusing_it(tmp_path, fast):
    pool = tmp_path / "pool.jsonl"
    examples = make_task("object_counting", 40, seed=0)
    write_examples(pool, examples)
    first = estimate(pool, out=tmp_path / "out", **fast)
    write_examples(pool, [Example(ex.id, ex.input, ex.target + "0", ex.instruction) for ex in examples])
    second = estimate(pool, out=tmp_path / "out", **fast)
    assert first.coslow.baselines.grad_norm_k != second.coslow.baselines.grad_norm_k


def test_own_calibration_for_the_model_has_no_borrowed_note(tmp_path, fast):
    calibration = {"family": "tiny-cal", "c": 0.5, "intercept": 0.3, "model_id": fast["model"], "loo_mae": 0.05, "n_tasks": 8}
    (tmp_path / "cal.json").write_text(json.dumps(calibration))
    own = {**fast, "borrow_calibration": False}  # nothing to borrow: the calibration is the model's own
    report = estimate(labelled_pool(tmp_path / "pool.jsonl"), family=str(tmp_path / "cal.json"), out=tmp_path / "out", **own)
    assert report.calibration_note is None
    assert "leave-one-out MAE 0.050 over 8 tasks" in report.markdown()


def test_a_calibration_of_another_model_is_refused_unless_borrowed(tmp_path, fast):
    pool = labelled_pool(tmp_path / "pool.jsonl")
    with pytest.raises(DataeffError, match="pass --borrow-calibration") as e:
        estimate(pool, out=tmp_path / "out", **{**fast, "borrow_calibration": False})
    assert f"'llama-3.1-8b' was fitted for meta-llama/Llama-3.1-8B-Instruct, not for {fast['model']}" in str(e.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written
    report = estimate(pool, out=tmp_path / "out", **fast)
    assert report.calibration.family == "llama-3.1-8b" and "its coefficients are borrowed" in report.calibration_note
    assert f"> **Note.** {report.calibration_note}" in report.markdown()
    assert "--borrow-calibration" in report.markdown()  # the plan command it suggests borrows too


def test_an_unlabelled_pool_returns_the_files_to_label_then_counts_the_labels(tmp_path, fast):
    examples = make_task("object_counting", 40, seed=0)
    write_examples(tmp_path / "pool.jsonl", [Example(ex.id, ex.input, None, ex.instruction) for ex in examples])
    waiting = estimate(tmp_path / "pool.jsonl", out=tmp_path / "out", **fast)
    assert waiting.status == "needs_annotations" and waiting.labelled == 0 and waiting.coslow is None and waiting.prediction is None
    assert waiting.to_annotate == [str(tmp_path / "out/to_annotate.jsonl"), str(tmp_path / "out/to_annotate.csv")]
    truth = {ex.id: ex.target for ex in examples}
    todo = tmp_path / "out/to_annotate.jsonl"
    todo.write_text("".join(json.dumps({**r, "target": truth[r["id"]]}) + "\n" for r in map(json.loads, todo.read_text().splitlines())))
    done = estimate(tmp_path / "pool.jsonl", out=tmp_path / "out", annotations=todo, **fast)
    assert done.status == "complete" and done.labelled == 4 and done.plan.labelled == 4
    assert done.coslow.k + len(done.coslow.excluded) == 4 and done.prediction.coslow == done.coslow.coslow


@pytest.mark.parametrize("change, message", [
    (dict(family="gpt-9"), "unknown family 'gpt-9'"),
    (dict(target=[1.0]), "target 1.0 is outside (0, 1)"),
    (dict(target=[0.0, 0.9]), "target 0.0 is outside (0, 1)"),
    (dict(k=5), "give a pool of at least 50 examples"),
    (dict(k=1), "k must be at least 2"),
])
def test_bad_requests_fail_before_any_output(tmp_path, fast, change, message):
    pool = labelled_pool(tmp_path / "pool.jsonl")
    with pytest.raises(DataeffError, match=message.replace("(", r"\(").replace(")", r"\)")):
        estimate(pool, out=tmp_path / "out", **{**fast, **change})
    assert not (tmp_path / "out").exists()


def test_annotations_of_another_pool_are_refused_by_id(tmp_path, fast):
    pool = labelled_pool(tmp_path / "pool.jsonl")
    (tmp_path / "labels.jsonl").write_text(json.dumps({"id": "someone-else-7", "input": "x", "target": "3"}) + "\n")
    with pytest.raises(DataeffError, match="labels.jsonl: id 'someone-else-7' is not in the pool"):
        estimate(pool, out=tmp_path / "out", annotations=tmp_path / "labels.jsonl", **fast)


def test_unlabelled_pool_round_trip_through_the_command_line(tmp_path, tiny_folder, capsys):
    truth = {ex.id: ex.target for ex in make_task("object_counting", 40, seed=0)}
    write_examples(tmp_path / "pool.jsonl", [Example(ex.id, ex.input, None, ex.instruction) for ex in make_task("object_counting", 40, seed=0)])
    args = ["estimate", str(tmp_path / "pool.jsonl"), "--model", str(tiny_folder), "--k", "4", "--out", str(tmp_path / "out"), "--quiet",
            "--borrow-calibration"]
    assert main(args) == 0
    todo = tmp_path / "out/to_annotate.jsonl"
    assert "--annotations" in capsys.readouterr().out and not (tmp_path / "out/report.json").exists()
    records = [json.loads(line) for line in todo.read_text().splitlines()]
    assert len(records) == 4 and all(r["target"] == "" for r in records)
    todo.write_text("".join(json.dumps({**r, "target": truth[r["id"]]}) + "\n" for r in records))
    assert main(args + ["--annotations", str(todo), "--target", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "target 0.9: annotate about" in out and "borrowed" in out
    assert "first step of the plan" in out and "next: annotate up to" in out and "curve shapes" in out  # honest interval, then the plan
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["status"] == "complete" and report["plan"]["next_budget"] >= 50


@pytest.mark.parametrize("extra, message", [
    (["--family", "nope"], "unknown family 'nope'"),
    (["--target", "1.5"], "target 1.5 is outside (0, 1)"),
    (["--k", "32"], "give a pool of at least 320 examples"),
    (["--k", "1"], "--k 1: CoS-Low compares pairs"),
    ([], "pass --borrow-calibration to use this one knowingly"),  # the tiny model has no calibration of its own
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, tiny_folder, capsys, extra, message):
    pool = labelled_pool(tmp_path / "pool.jsonl")
    assert main(["estimate", str(pool), "--model", str(tiny_folder), "--k", "4", "--quiet"] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_demo_on_the_default_model(tmp_path):
    "The README's main job, as a user runs it: offline, the default model, the Llama calibration said to be borrowed."
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-m", "dataeff.cli", "demo", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "borrowed" in run.stdout and "target 0.9: annotate about" in run.stdout
    assert "intervals (95%) hold: the scatter of tasks around the line" in run.stdout  # the honest interval
    assert run.stdout.rstrip().splitlines()[-2].startswith("next: annotate up to")   # ends with the plan's first step
    report = json.loads((tmp_path / "demo/report.json").read_text())
    assert report["plan"]["target"] == 0.9 and report["plan"]["next_budget"] in PLAN_BUDGETS
    assert report["model"] == "smollm2-135m" and report["calibration"]["family"] == "llama-3.1-8b"
    assert report["coslow"]["k"] + len(report["coslow"]["excluded"]) == 32
    assert report["coslow"]["baselines"]["cos_sim_k"] is not None
    assert "scoring" in run.stderr  # progress bars


def test_a_large_pool_is_scored_through_its_seeded_sample(tmp_path, fast):
    "With --max-pool smaller than the pool, the job scores the sample alone, and the report says how many of how many."
    pool = labelled_pool(tmp_path / "pool.jsonl", n=400)
    report = estimate(pool, out=tmp_path / "out", max_pool=40, **fast)
    assert report.status == "complete" and (report.n_scored, report.n_pool) == (40, 400)
    assert len((tmp_path / "out/scores.jsonl").read_text().splitlines()) == 40
    md = report.markdown()
    assert "the 4 least-confident of 40 of 400 pool examples (a seeded sample) (seed 0)" in md
    assert f"Gradients of D = {report.coslow.gradient_dim:,} values per example; memory on cpu: model " in md
    assert json.loads((tmp_path / "out/report.json").read_text())["coslow"]["memory"]["gradient_dim"] == report.coslow.gradient_dim
    whole_pool = estimate(pool, out=tmp_path / "whole", max_pool=0, **fast)
    assert (whole_pool.n_scored, whole_pool.n_pool) == (400, 400) and "of 400 pool examples (seed 0)" in whole_pool.markdown()


def test_estimate_over_two_processes_scores_in_both_and_estimates_once(tmp_path, tiny_folder):
    "Under torchrun (two CPU processes, gloo) the scoring is shared; CoS-Low and the report come from the main process alone, as one process gives them."
    import torch
    pool = labelled_pool(tmp_path / "pool.jsonl")
    args = ["estimate", str(pool), "--model", str(tiny_folder), "--k", "4", "--lora-r", "8", "--lora-alpha", "16", "--resamples", "200", "--borrow-calibration"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: assert main([*args, "--out", str(tmp_path / "one"), "--quiet"]) == 0
    finally: torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dataeff.cli", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "gathered the scores of 2 processes (20 + 20 new)" in two.stderr
    assert two.stdout.count("[3/4] CoS-Low") == 1 and two.stdout.count("first step of the plan") == 1  # one CoS-Low step, one report
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert one["coslow"]["ids"] == two["coslow"]["ids"]  # the same selection from scores equal up to fp32 rounding
    assert two["coslow"]["coslow"] == one["coslow"]["coslow"]  # the same gradients, by one process with one thread in both: bit-identical
