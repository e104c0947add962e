import json, math
import numpy as np, pandas as pd, pytest
from dataeff.cli import main
from dataeff.core import DataeffError
from dataeff.curves import analyse_results, budget_for_target, measured_budget_for_target, measured_score, task_curve
from dataeff.savings import (annotation_savings, fit_inverse_power_law, follow_prediction, incremental_baseline,
                             inverse_power_law_budget, inverse_power_law_cost)


# normalised scores equal accuracies here: zero-shot 0, ceiling 1
STEEP = {0: 0.0, 50: 0.3, 100: 0.4, 200: 0.5, 500: 0.7, 1000: 0.95, 2500: 0.97, 5000: 1.0}
FLAT = {0: 0.0, 50: 0.1, 100: 0.2, 200: 0.3, 500: 0.4, 1000: 0.5, 2500: 0.6, 5000: 0.7}


def curve(scores, task="t"): return task_curve(task, scores, human=1.0)


def test_measured_score_inverts_measured_budget():
    c = curve(STEEP)
    for t in (0.35, 0.6, 0.9, 0.96):
        n = measured_budget_for_target(c.budgets, c.normalised, t)
        assert measured_score(c, n) == pytest.approx(t, abs=1e-12)  # float64 interpolation on O(1) values: a few ulps
    assert measured_score(c, 500) == 0.7 and measured_score(c, 0) == 0.0


def test_baseline_and_prediction_protocol():
    c = curve(STEEP)
    assert incremental_baseline(c, 0.9) == (1000, 5)
    assert incremental_baseline(c, 0.96) == (2500, 6)
    assert follow_prediction(c, 0.9, 900) == (900, 1)        # enough: one round
    assert follow_prediction(c, 0.9, 600) == (1000, 2)       # short: next grid budget above 600
    assert follow_prediction(c, 0.9, 100) == (1000, 4)       # short: 100, then 200 and 500 fail, 1000 reaches it
    assert follow_prediction(c, 0.9, 300, annotated=500, rounds=4) == (1000, 5)  # prediction below what is annotated: no extra round


def test_inverse_power_law_fit_and_budget():
    n = np.array([50, 100, 200, 500.])
    a, b, c = fit_inverse_power_law(n, 0.9 - 2.0*n**-0.5)
    assert (a, b, c) == pytest.approx((0.9, 2.0, 0.5), rel=1e-4)  # curve_fit stops at its own convergence tolerance (~1e-8 on the cost), not at rounding
    assert inverse_power_law_budget((0.9, 2.0, 0.5), 0.8) == pytest.approx(400, rel=1e-9)  # float64 pow: a few ulps
    assert inverse_power_law_budget((0.9, 2.0, 0.5), 0.95) == math.inf
    assert inverse_power_law_budget(None, 0.5) == math.inf


def test_ipl_cost_includes_its_measured_annotations_and_rounds():
    c = curve(STEEP)
    n_hat, cost, rounds = inverse_power_law_cost(c, 0.45, 500)   # reached at 200 while collecting
    assert math.isnan(n_hat) and (cost, rounds) == (200, 3)
    n_hat, cost, rounds = inverse_power_law_cost(c, 0.9, 200)
    assert rounds >= 4 and cost >= 500*2**0.8                    # 3 rounds up to 200, then at least one more; never below n*
    assert cost == n_hat or cost in (500, 1000, 2500, 5000)
    never = curve(FLAT)
    n_hat, cost, rounds = inverse_power_law_cost(never, 0.69, 500)
    assert cost == 5000 and n_hat <= 5000


def test_annotation_savings_rows_and_totals():
    curves = {"steep": curve(STEEP, "steep"), "flat": curve(FLAT, "flat")}
    res = annotation_savings(curves, targets=[0.9, 0.65])
    assert res.unreached == {0.9: ["flat"], 0.65: []}
    base = res.rows[res.rows.predictor == "incremental"].set_index(["task", "target"]).cost
    assert base[("steep", 0.9)] == 1000 and base[("flat", 0.65)] == 5000
    oracle = res.rows[(res.rows.predictor == "oracle") & (res.rows.task == "steep") & (res.rows.target == 0.9)].iloc[0]
    assert oracle.n_hat == math.ceil(budget_for_target(curves["steep"].auc, 0.9))
    assert oracle.savings == 1000 - oracle.cost and oracle.over_annotation == pytest.approx(oracle.cost - 500*2**0.8)  # float64, one pow (approx's default 1e-6 is far above)
    tot = res.totals().set_index(["target", "predictor"])
    assert tot.loc[(0.9, "incremental"), "tasks"] == 1 and tot.loc[(0.65, "oracle"), "tasks"] == 2
    assert (res.rows.over_annotation >= -1e-9).all()  # float64 differences of budgets <= 5000: rounding ~1e-12 absolute


def test_coslow_predictor_uses_leave_one_out_coefficients():
    rng = np.random.default_rng(0)
    curves, coslow = {}, {}
    for i in range(6):
        top = 0.6 + 0.07*i
        curves[f"t{i}"] = curve({0: 0.0, 50: top*0.5, 100: top*0.7, 200: top*0.8, 500: top*0.9, 1000: top, 2500: 1.0, 5000: 1.0}, f"t{i}")
        coslow[f"t{i}"] = 0.1*i + rng.normal(0, 0.02)
    res = annotation_savings(curves, targets=[0.8], coslow=coslow | {"extra": 0.3}, fit_budgets=())
    x = np.array([coslow[f"t{i}"] for i in range(6)]); y = np.array([curves[f"t{i}"].auc for i in range(6)])
    loo0 = np.polyval(np.polyfit(x[1:], y[1:], 1), x[0])
    row = res.rows[(res.rows.predictor == "coslow-loo") & (res.rows.task == "t0")].iloc[0]
    assert row.n_hat == min(math.ceil(budget_for_target(loo0, 0.8)), 5000)
    assert res.left_out == []


def test_bad_targets_and_too_few_coslow_tasks():
    curves = {"steep": curve(STEEP, "steep")}
    with pytest.raises(DataeffError, match="target 1.0 is outside"): annotation_savings(curves, targets=[1.0])
    with pytest.raises(DataeffError, match="at least 3 tasks"): annotation_savings(curves, coslow={"steep": 0.3})


def test_cli_savings_on_reference_llama(reference, tmp_path, capsys):
    ref = reference
    from dataeff.paper import paper_coslow
    coslow = paper_coslow()["coslow"]
    pd.DataFrame(dict(task=list(coslow), coslow=list(coslow.values()))).to_csv(tmp_path/"coslow.csv", index=False)
    out, png = tmp_path/"s.json", tmp_path/"s.png"
    assert main(["savings", str(ref/"results"/"finetune_results"), "--curve-prefix", "llama", "--coslow-table", str(tmp_path/"coslow.csv"),
                 "--target", "0.9", "--json", str(out), "--plot", str(png)]) == 0
    d = json.loads(out.read_text())
    tot = {r["predictor"]: r for r in d["totals"]}
    assert tot["incremental"]["tasks"] == 19 and tot["incremental"]["rounds"] == 99 and tot["incremental"]["cost"] == 36250
    assert tot["oracle"]["rounds"] < tot["incremental"]["rounds"]
    assert sorted(d["unreached"]["0.9"]) == ["anli", "medmcqa", "mnli", "sst2", "toxicchat0124"]
    assert len(d["left_out"]) == 16 and png.stat().st_size > 0
    assert "totals:" in capsys.readouterr().out


def test_cli_bad_input_exits_2(reference, tmp_path, capsys):
    ref = reference
    assert main(["savings", str(ref/"results"/"finetune_results"), "--curve-prefix", "llama", "--target", "0"]) == 2
    assert main(["savings", str(ref/"results"/"finetune_results"), "--curve-prefix", "llama", "--fit-budgets", "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "target 0.0" in err[0] and "--fit-budgets 300" in err[1]


def test_cli_paper_family_is_the_released_curves_with_the_papers_coslow(reference, tmp_path, capsys):
    from dataeff.paper import paper_coslow
    coslow = paper_coslow()["coslow"]
    pd.DataFrame(dict(task=list(coslow), coslow=list(coslow.values()))).to_csv(tmp_path/"coslow.csv", index=False)
    assert main(["savings", str(reference/"results"/"finetune_results"), "--curve-prefix", "llama", "--coslow-table", str(tmp_path/"coslow.csv"),
                 "--target", "0.9", "--json", str(tmp_path/"given.json")]) == 0
    assert main(["savings", "--paper", "llama", "--target", "0.9", "--json", str(tmp_path/"paper.json")]) == 0
    assert json.loads((tmp_path/"paper.json").read_text()) == json.loads((tmp_path/"given.json").read_text())
    capsys.readouterr()
    assert main(["savings", str(reference/"results"/"finetune_results"), "--paper", "llama"]) == 2
    assert main(["savings", "--paper", "llama", "--curve-prefix", "llama"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--paper FAMILY" in err[0] and "--curve-prefix goes with a RESULTS folder" in err[1]
