import json, math
import numpy as np, pandas as pd, pytest
from dataeff.cli import main
from dataeff.core import DataeffError
from dataeff.calibrate import (CALIBRATIONS, Calibration, fit_calibration, load_calibration, read_table,
                               save_calibration, saved_calibrations_dir)
from dataeff.coslow import CoslowReport
from dataeff.paper import PAPER_FAMILIES, paper_coslow


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAEFF_CACHE", str(tmp_path/"cache"))


def toy_table(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.7, n)
    return pd.DataFrame(dict(task=[f"task{i}" for i in range(n)], coslow=x, auc=0.5*x + 0.3 + rng.normal(0, 0.03, n)))


def test_paper_families_are_registered_with_published_coefficients():
    assert set(CALIBRATIONS) == {"llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-14b"}
    m = load_calibration("mistral-7b-v0.3")
    assert (m.c, m.intercept, m.c_se, m.intercept_se) == (0.797, 0.357, 0.012, 0.002)
    assert m.residual_sd is None and m.loo_mae is None and m.tasks is None
    assert m.scatter_sd == 0.125 and "assumed" in m.scatter_source  # no Mistral CoS-Low values: Llama's scatter


def test_unknown_family_is_one_clear_error():
    with pytest.raises(DataeffError, match="unknown family 'nope'.*llama-3.1-8b"):
        load_calibration("nope")


def test_fit_matches_float64_reference_and_loo_by_refitting():
    t = toy_table()
    cal = fit_calibration(t, "toy", n_boot=500, seed=3)
    x, y = t.coslow.to_numpy(), t.auc.to_numpy()
    np.testing.assert_allclose([cal.c, cal.intercept], np.polyfit(x, y, 1), rtol=1e-12)  # float64 over <= ~20 values, well conditioned: any order/BLAS leaves a few ulps (~1e-15); 1e-12 is 10^3x that
    assert cal.r == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)  # likewise
    loo = [np.polyval(np.polyfit(np.delete(x, i), np.delete(y, i), 1), x[i]) for i in range(len(x))]
    np.testing.assert_allclose([d["loo_auc"] for d in cal.tasks], loo, rtol=1e-12)  # likewise
    assert cal.loo_mae == pytest.approx(np.mean(np.abs(np.array(loo) - y)), rel=1e-12)  # likewise
    assert cal.r_interval[0] < cal.r < cal.r_interval[1]


def test_bootstrap_is_seeded():
    t = toy_table()
    a, b, c = (fit_calibration(t, "toy", n_boot=300, seed=s).r_interval for s in (1, 1, 2))
    assert a == b and a != c


def test_prediction_interval_covers_new_tasks_at_the_stated_rate():
    from scipy import stats
    rng, hits, trials = np.random.default_rng(7), 0, 400
    for _ in range(trials):
        x = rng.uniform(0, 0.7, 10); y = 0.5*x + 0.3 + rng.normal(0, 0.05, 10)
        cal = fit_calibration(dict(task=[str(i) for i in range(10)], coslow=x, auc=y), "toy", n_boot=0)
        x0 = rng.uniform(0, 0.7); y0 = 0.5*x0 + 0.3 + rng.normal(0, 0.05)
        sd, dof = cal.prediction_sd(x0)
        hits += abs(y0 - (cal.c*x0 + cal.intercept)) <= stats.t.ppf(0.975, dof)*sd
    assert 0.91 <= hits/trials <= 0.99


@pytest.mark.parametrize("table,msg", [
    (dict(task=["a", "b"], coslow=[0.1, 0.2], auc=[0.3, 0.4]), "at least 3 tasks"),
    (dict(task=["a", "b", "b"], coslow=[0.1, 0.2, 0.3], auc=[0.3, 0.4, 0.5]), "duplicate task"),
    (dict(task=["a", "b", "c"], coslow=[0.1, 0.2, float("nan")], auc=[0.3, 0.4, 0.5]), "task 'c' has coslow"),
    (dict(task=["a", "b", "c"], coslow=[0.1, 0.2, 0.3]), "missing column(s) auc"),
])
def test_bad_tables_are_refused(table, msg):
    with pytest.raises(DataeffError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        fit_calibration(table, "x")


def test_save_load_roundtrip_and_saved_family_name_resolves(tmp_path):
    cal = fit_calibration(toy_table(), "mine", model_id="some/model", n_boot=100)
    path = save_calibration(cal)
    assert path == saved_calibrations_dir()/"mine.json"
    back = load_calibration("mine")
    assert back == cal
    assert set(json.loads(path.read_text())) >= {"family", "model_id", "c", "intercept", "c_se", "intercept_se", "residual_sd",
                                                 "n_tasks", "loo_mae", "r", "tasks"}


def test_read_table_csv_and_both_json_forms(tmp_path):
    t = toy_table(5)
    t.to_csv(tmp_path/"t.csv", index=False)
    (tmp_path/"records.json").write_text(t.to_json(orient="records"))
    (tmp_path/"bytask.json").write_text(json.dumps({r.task: dict(coslow=r.coslow, auc=r.auc) for r in t.itertuples()}))
    for name in ("t.csv", "records.json", "bytask.json"):
        pd.testing.assert_frame_equal(read_table(tmp_path/name), t, check_exact=False, rtol=1e-12)  # text round trip, no arithmetic: the same on any CPU


def test_cli_calibrate_from_table_writes_calibration_and_plot(tmp_path, capsys):
    toy_table().to_csv(tmp_path/"t.csv", index=False)
    assert main(["calibrate", str(tmp_path/"t.csv"), "--family", "toy", "--out", str(tmp_path/"c.json"), "--plot", str(tmp_path/"c.png")]) == 0
    d = json.loads((tmp_path/"c.json").read_text())
    assert d["family"] == "toy" and d["n_tasks"] == 12 and (tmp_path/"c.png").stat().st_size > 0
    assert "leave-one-out MAE" in capsys.readouterr().out


def test_cli_bad_table_exits_2(tmp_path, capsys):
    pd.DataFrame(dict(task=["a", "a", "b"], coslow=[0.1, 0.2, 0.3], auc=[0.3, 0.4, 0.5])).to_csv(tmp_path/"t.csv", index=False)
    assert main(["calibrate", str(tmp_path/"t.csv"), "--family", "toy"]) == 2
    err = capsys.readouterr().err
    assert "duplicate task(s) a" in err and len(err.strip().splitlines()) == 1
    assert main(["calibrate", str(tmp_path/"missing.csv"), "--family", "toy"]) == 2


def test_cli_results_folder_with_coslow_reports(reference, tmp_path):
    ref = reference
    coslow = paper_coslow()["coslow"]
    reports = tmp_path/"reports"; reports.mkdir()
    for task in list(coslow)[:8]:  # a CoS-Low report as dataeff coslow writes it, holding the paper's value
        report = CoslowReport(coslow=coslow[task], interval=[coslow[task]] * 2, level=0.95, k=64, seed=0, model=PAPER_FAMILIES["llama"])
        (reports/f"{task}.json").write_text(json.dumps(report.to_dict()))
    out = tmp_path/"c.json"
    assert main(["calibrate", str(ref/"results"/"finetune_results"), "--reports", str(reports), "--curve-prefix", "llama",
                 "--family", "part", "--out", str(out), "--n-boot", "100"]) == 0
    cal = load_calibration(out)
    auc_res = json.loads((ref/"results"/"auc_res"/"llama_auc_logscale_by_task_5000.json").read_text())
    assert cal.n_tasks == 8
    for d in cal.tasks: assert d["auc"] == pytest.approx(auc_res[d["task"]]["extrapolation_auc"], abs=1e-9)  # float64 AUC of <= 10 curve points vs the authors' float64: ~1e-15 apart


def test_paper_headline_error_from_its_own_numbers(reference):
    ref = reference
    coslow = paper_coslow()["coslow"]
    assert len(coslow) == 24
    auc_res = json.loads((ref/"results"/"auc_res"/"llama_auc_logscale_by_task_5000.json").read_text())
    cal = fit_calibration(dict(task=list(coslow), coslow=list(coslow.values()), auc=[auc_res[t]["extrapolation_auc"] for t in coslow]), "llama")
    assert cal.r == pytest.approx(0.72, abs=0.01) and cal.c == pytest.approx(0.65, abs=0.01)  # the paper's numbers, printed to two decimals
    assert cal.intercept == pytest.approx(0.28, abs=0.01) and cal.loo_mae == pytest.approx(0.087, abs=0.002)  # likewise (two or three decimals)
