"""Tests of dataeff.curves: the published AUC values, the power-curve model, and every bad-input path of `dataeff auc`."""
import json, math, os
from functools import lru_cache

import numpy as np
import pytest

from dataeff.cli import main
from dataeff.core import read_json
from dataeff.curves import (analyse_results, budget_for_target, data_efficiency_auc, load_results,
                            measured_budget_for_target, power_curve, log_budget, auc_to_exponent)

from conftest import reference_data

MODELS = ("llama", "mistral", "qwen")
REFERENCE = reference_data()


def _published(model):
    return read_json(REFERENCE/"results"/"auc_res"/f"{model}_auc_logscale_by_task_5000.json")


def _pairs():
    if REFERENCE is None: return [pytest.param(None, None, id="reference-data-missing")]
    return [pytest.param(m, t, id=f"{m}-{t}") for m in MODELS for t in _published(m)]


@pytest.fixture
def reference():
    "The authors' data folder; missing fails under CI and skips elsewhere."
    if REFERENCE is None:
        if os.environ.get("CI"): pytest.fail("reference data (shared/reference/paper-results) missing; set DATAEFF_PAPER_DATA")
        pytest.skip("reference data not present")
    return REFERENCE


@lru_cache
def _analysed(model):
    return analyse_results(REFERENCE/"results"/"finetune_results", curve_prefix=model)


def test_all_100_published_pairs_are_tested(reference):
    assert sum(len(_published(m)) for m in MODELS) == 100


@pytest.mark.parametrize("model,task", _pairs())
def test_reproduces_published_auc(reference, model, task):
    ref, curve = _published(model)[task], _analysed(model)[task]
    assert abs(curve.auc - ref["extrapolation_auc"]) <= 1e-9  # float64 AUC of <= 10 curve points vs the authors' float64: ~1e-15 apart
    assert abs(curve.min_acc - ref["min_acc"]) <= 1e-12  # copied/compared float64 values: a few ulps at most
    assert abs(curve.max_acc - ref["max_acc"]) <= 1e-12
    assert abs(curve.ceiling - ref["human_eval"]) <= 1e-12


@pytest.mark.parametrize("model", MODELS)
def test_cli_json_matches_published(reference, model, tmp_path, capsys):
    out = tmp_path/"auc.json"
    assert main(["auc", str(reference/"results"/"finetune_results"), "--curve-prefix", model, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    written = json.loads(out.read_text())
    for task, ref in _published(model).items():
        assert abs(written[task]["auc"] - ref["extrapolation_auc"]) <= 1e-9  # as above
        assert abs(written[task]["ceiling"] - ref["human_eval"]) <= 1e-12
        assert task in table
    aucs = [v["auc"] for v in written.values()]
    assert aucs == sorted(aucs, reverse=True)


def test_cli_plot_writes_figure(reference, tmp_path, capsys):
    out = tmp_path/"fig.png"
    assert main(["auc", str(reference/"results"/"finetune_results"), "--curve-prefix", "qwen", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_single_authors_file_finds_human_eval_beside_its_folder(reference):
    res = load_results(reference/"results"/"finetune_results"/"llama_anli_full_result_v2.json")
    assert list(res.scores) == ["anli"] and res.human["anli"] == 0.92


# ---- the metric and the power-curve model on hand-made curves

def test_hockey_stick_auc_is_last_triangle():
    assert data_efficiency_auc({0: 0.2, 5000: 1.0}) == pytest.approx(0.5 / math.log2(5000), abs=1e-15)  # two float64 operations on O(0.1) values: <= 2 ulps


def test_straight_line_has_auc_half():
    grid = [0, 50, 100, 200, 500, 1000, 2500, 5000]
    x = log_budget(grid)
    # scores equal to the log-scaled budget: y = x, whose area is exactly 1/2
    auc = data_efficiency_auc(dict(zip(grid, x)))
    assert auc == pytest.approx(0.5, abs=1e-12)  # float64, a few operations: a few ulps


def test_human_ceiling_above_best_lowers_auc():
    curve = {0: 0.5, 50: 0.7, 5000: 0.9}
    assert data_efficiency_auc(curve, human=1.0) < data_efficiency_auc(curve)


def test_budget_for_target_worked_example_and_inverse():
    assert budget_for_target(0.661, 0.9) == pytest.approx(1028, abs=1)  # the paper's budget, an integer
    aucs, targets = np.array([0.15, 0.4, 0.7])[:, None], np.array([0.1, 0.5, 0.9])
    n = budget_for_target(aucs, targets)
    assert n.shape == (3, 3)
    np.testing.assert_allclose(power_curve(log_budget(n), auc_to_exponent(aucs)), np.broadcast_to(targets, (3, 3)), atol=1e-12)  # float64 log/pow round trip: ~10 ulps


def test_measured_budget_interpolates_in_log2_and_reports_not_reached():
    got = measured_budget_for_target([0, 100, 400], [0.0, 0.4, 0.8], [0.6, 0.8, 0.9])
    np.testing.assert_allclose(got[:2], [200.0, 400.0])  # float64 interpolation between grid points: rtol 1e-7 is ~10^9 ulps
    assert got[2] == math.inf
    assert measured_budget_for_target([0, 100, 400], [0.0, 0.4, 0.8], 0.9) == math.inf


# ---- bad input: one line, exit status 2, naming the file and the fix

def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _fails(capsys, argv, *expected):
    assert main(["auc", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected: assert text in err, err


def test_missing_file(tmp_path, capsys):
    _fails(capsys, [str(tmp_path/"nope.json")], "nope.json", "no such file")


def test_non_json_file(tmp_path, capsys):
    _fails(capsys, [_write(tmp_path/"r.json", "{oops")], "r.json", "not valid JSON")


def test_budget_not_integer(tmp_path, capsys):
    _fails(capsys, [_write(tmp_path/"r.json", {"0": {"accuracy": 0.5}, "fifty": {"accuracy": 0.6}})], "r.json", "budget 'fifty'", "integers")


@pytest.mark.parametrize("entry,expected", [
    ({"bleu": 0.3}, "score missing"),
    ({"accuracy": float("nan")}, "NaN"),
    ({"accuracy": 1.5}, "outside [0, 1]"),
    ({"accuracy": -0.1}, "outside [0, 1]"),
    ({"accuracy": "high"}, "not a number"),
])
def test_bad_score(tmp_path, capsys, entry, expected):
    path = _write(tmp_path/"r.json", {"0": {"accuracy": 0.5}, "100": entry})
    _fails(capsys, [path], "r.json", "budget 100", expected)


def test_generation_task_needs_f1(tmp_path, capsys):
    path = _write(tmp_path/"llama_coqa_full_result_v2.json", {"0": {"accuracy": 0.1}, "100": {"accuracy": 0.5}})
    _fails(capsys, [path], "llama_coqa_full_result_v2.json", "'f1'", "coqa")


def test_fewer_than_two_points(tmp_path, capsys):
    path = _write(tmp_path/"r.json", {"0": {"accuracy": 0.5}, "10000": {"accuracy": 0.9}})
    _fails(capsys, [path], "r.json", "task 'r'", "at least two points")


def test_ceiling_not_above_zero_shot(tmp_path, capsys):
    path = _write(tmp_path/"r.json", {"0": {"accuracy": 0.8}, "100": {"accuracy": 0.7}})
    _fails(capsys, [path], "r.json", "task 'r'", "not above the zero-shot")


def test_folder_without_files_for_model(tmp_path, capsys):
    _write(tmp_path/"llama_sst2_full_result_v2.json", {"0": {"accuracy": 0.5}, "100": {"accuracy": 0.9}})
    _fails(capsys, [str(tmp_path), "--curve-prefix", "qwen"], str(tmp_path), "no qwen_*", "prefixes here: llama")


def test_folder_with_several_models_needs_model(tmp_path, capsys):
    for m in ("llama", "qwen"): _write(tmp_path/f"{m}_sst2_full_result_v2.json", {"0": {"accuracy": 0.5}, "100": {"accuracy": 0.9}})
    _fails(capsys, [str(tmp_path)], "several models", "--curve-prefix")


def test_bad_human_eval_score(tmp_path, capsys):
    _write(tmp_path/"llama_sst2_full_result_v2.json", {"0": {"accuracy": 0.5}, "100": {"accuracy": 0.9}})
    human = _write(tmp_path/"h.json", {"sst2": {"score": 95}})
    _fails(capsys, [str(tmp_path), "--human-eval", human], "h.json", "task 'sst2'", "outside [0, 1]")


def test_csv_bad_rows(tmp_path, capsys):
    _fails(capsys, [_write(tmp_path/"c.csv", "task,budget,score\nt,0,0.5\nt,2.5,0.6\n")], "c.csv", "budget '2.5'")
    _fails(capsys, [_write(tmp_path/"d.csv", "task,budget\nt,0\n")], "d.csv", "row 1", "score missing")
    _fails(capsys, [_write(tmp_path/"e.csv", "task,budget,score\nt,0,0.5\nt,0,0.6\n")], "e.csv", "appears twice")


def test_plot_with_unknown_format(tmp_path, capsys):
    path = _write(tmp_path/"c.csv", "task,budget,score\nt,0,0.5\nt,100,0.8\nt,5000,0.9\n")
    _fails(capsys, [path, "--plot", str(tmp_path/"fig.xyz")], "fig.xyz", ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]


# ---- users' own curves

def test_csv_and_records_give_the_same_curves(tmp_path, capsys):
    csv = _write(tmp_path/"c.csv", "task,budget,score\nt,0,0.5\nt,100,0.8\nt,5000,0.9\nu,0,0.1\nu,1000,0.3\n")
    records = _write(tmp_path/"r.json", [{"task": "t", "budget": 0, "score": 0.5}, {"task": "t", "budget": 100, "score": 0.8},
                                        {"task": "t", "budget": 5000, "score": 0.9}, {"task": "u", "budget": 0, "score": 0.1},
                                        {"task": "u", "budget": 1000, "score": 0.3}])
    assert load_results(csv).scores == load_results(records).scores == {"t": {0: 0.5, 100: 0.8, 5000: 0.9}, "u": {0: 0.1, 1000: 0.3}}
    assert main(["auc", csv, "--json", str(tmp_path/"o.json")]) == 0
    out = capsys.readouterr().out
    assert "no human_eval.json found" in out
    written = json.loads((tmp_path/"o.json").read_text())
    assert written["t"]["auc"] == pytest.approx(data_efficiency_auc({0: 0.5, 100: 0.8, 5000: 0.9}), abs=1e-15)  # the same float64 computation
    assert written["t"]["ceiling"] == 0.9
