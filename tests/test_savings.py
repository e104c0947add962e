import json, math, os
import numpy as np, pandas as pd, pytest
from dataeff.cli import main
from dataeff.budgets import NoiseModel
from dataeff.core import DataeffError
from dataeff.curves import budget_for_target, measured_budget_for_target, measured_score, task_curve
from dataeff.savings import (CURVE_FAMILIES, DOUBLING, PREDICTORS, CurveFit, Grid, LastObservation, PowerCurve, annotation_savings, curve_prior,
                             fit_curve, map_fit, noisy_observer, run_loop)


# normalised scores equal accuracies here: zero-shot 0, ceiling 1
STEEP = {0: 0.0, 50: 0.3, 100: 0.4, 200: 0.5, 500: 0.7, 1000: 0.95, 2500: 0.97, 5000: 1.0}
FLAT = {0: 0.0, 50: 0.1, 100: 0.2, 200: 0.3, 500: 0.4, 1000: 0.5, 2500: 0.6, 5000: 0.7}
RIVALS = ("grid", "doubling", "last-obs", "mmf4", "pow4", "xp-coslow")


def curve(scores, task="t"): return task_curve(task, scores, human=1.0)


def exact(proposer, c, t): return run_loop(proposer, c, t, noisy_observer(0.0), NoiseModel(0.0))


def test_measured_score_inverts_measured_budget():
    c = curve(STEEP)
    for t in (0.35, 0.6, 0.9, 0.96):
        n = measured_budget_for_target(c.budgets, c.normalised, t)
        assert measured_score(c, n) == pytest.approx(t, abs=1e-12)  # float64 interpolation on O(1) values: a few ulps
    assert measured_score(c, 500) == 0.7 and measured_score(c, 0) == 0.0


def test_grid_loop_is_the_incremental_protocol():
    c = curve(STEEP)
    assert (exact(Grid(), c, 0.9).cost, exact(Grid(), c, 0.9).rounds) == (1000, 5)
    assert (exact(Grid(), c, 0.96).cost, exact(Grid(), c, 0.96).rounds) == (2500, 6)
    assert (exact(Grid(DOUBLING), c, 0.9).cost, exact(Grid(DOUBLING), c, 0.9).rounds) == (1600, 6)
    never = exact(Grid(), curve(FLAT), 0.9)
    assert never.gave_up and never.cost == 5000 and never.rounds == 7 + 2  # the grid, then two more runs at 5000
    assert exact(PowerCurve(0.6), c, 0.9).history[0][0] == math.ceil(budget_for_target(0.6, 0.9))


def test_noise_makes_the_rule_demand_a_margin_and_short_stops_are_counted():
    c = curve(STEEP)
    runs = [run_loop(Grid(), c, 0.9, noisy_observer(0.05, seed), NoiseModel(0.05)) for seed in range(30)]
    for r in runs:
        b, y = r.history[-1]
        if not r.gave_up: assert y >= 0.9 + 1.39*0.05 or len([h for h in r.history if h[0] == b]) > 1  # one run stops only ~1.4 σ above the target
        assert r.stopped_short == (not r.gave_up and measured_score(c, r.cost) < 0.9)
    assert run_loop(Grid(), c, 0.9, noisy_observer(0.05, 3), NoiseModel(0.05)).history == runs[3].history  # seeded


def test_curve_families_and_their_fits():
    n = np.array([0, 50, 100, 200, 500, 1000, 2500, 5000.])
    for name, theta in [("mmf4", (0.0, 0.95, math.log(300), math.log(0.9))), ("pow4", (0.0, 0.97, math.log(150), math.log(0.6)))]:
        f, budget = CURVE_FAMILIES[name]
        fitted, rms = fit_curve(name, n, f(n, theta))
        np.testing.assert_allclose(f(n, fitted), f(n, theta), atol=1e-5)  # least_squares stops at its own tolerance (~1e-8 on the cost)
        assert rms < 1e-5 and f(0, theta) == pytest.approx(theta[0], abs=1e-9)  # f(0) = a; MMF4 takes n = 0 as 1e-9, (c − a)/(1 + (κ/1e-9)^d) ≈ 4e-11 here
        assert f(budget(theta, 0.8), theta) == pytest.approx(0.8, abs=1e-9)  # the closed-form inverse: float64 pow/exp, ulps
        assert budget(theta, -0.1) == 0.0 and budget(theta, 0.99) == math.inf
    prior = curve_prior(None, "pow4", "t")  # too few curves: the broad fallback prior
    theta = map_fit(prior, {200.0: [0.5], 500.0: [0.7]}, 0.0)
    assert abs(CURVE_FAMILIES["pow4"][0](500, theta) - 0.7) < 0.1  # the fit follows the runs
    assert CurveFit(prior).propose({500.0: [0.7]}, NoiseModel(0.0), 0.9, 0.9) >= 625  # never less than 1.25 × annotated
    assert LastObservation().propose({}, NoiseModel(0.0), 0.9, 0.9) == 50


def test_annotation_savings_rows_and_totals():
    curves = {"steep": curve(STEEP, "steep"), "flat": curve(FLAT, "flat")}
    res = annotation_savings(curves, target=[0.9, 0.65], round_cost=[100, 300])
    assert res.unreached == {0.9: ["flat"], 0.65: []}
    rows = res.rows.set_index(["task", "target", "predictor"])
    assert rows.loc[("steep", 0.9, "grid"), "cost"] == 1000 and rows.loc[("flat", 0.65, "grid"), "cost"] == 5000
    assert set(res.rows.predictor) == set(PREDICTORS) and (res.rows.predictor == "plan").sum() == 3*2  # the plan at each round cost
    tot = res.totals().set_index(["round_cost", "target", "predictor"])
    assert tot.loc[(300, 0.9, "grid"), "tasks"] == 1 and tot.loc[(100, 0.65, "mmf4"), "tasks"] == 2
    g = tot.loc[(300, 0.65, "grid")]
    assert g.total_cost == g.cost + 300*g.rounds and g.perfect_information == pytest.approx(g.n_star + 300*2, abs=1e-9)  # float64 sums
    assert tot.loc[(100, 0.65, "grid"), "cost"] == g.cost and tot.loc[(100, 0.65, "grid"), "total_cost"] == g.cost + 100*g.rounds
    assert not res.rows.stopped_short.any() and not res.rows.gave_up.any()  # without noise nobody stops below the target
    assert (res.rows.cost >= res.rows.n_star - 1e-9).all()  # float64 budgets <= 5000: rounding ~1e-12


def test_xp_coslow_uses_leave_one_out_coefficients():
    rng = np.random.default_rng(0)
    curves, coslow = {}, {}
    for i in range(6):
        top = 0.6 + 0.07*i
        curves[f"t{i}"] = curve({0: 0.0, 50: top*0.5, 100: top*0.7, 200: top*0.8, 500: top*0.9, 1000: top, 2500: 1.0, 5000: 1.0}, f"t{i}")
        coslow[f"t{i}"] = 0.1*i + rng.normal(0, 0.02)
    res = annotation_savings(curves, target=[0.8], coslow=coslow | {"extra": 0.3}, predictors=["xp-coslow"])
    x = np.array([coslow[f"t{i}"] for i in range(6)]); y = np.array([curves[f"t{i}"].auc for i in range(6)])
    loo0 = np.polyval(np.polyfit(x[1:], y[1:], 1), x[0])
    row = res.rows[res.rows.task == "t0"].iloc[0]
    assert row.history[0][0] == min(math.ceil(budget_for_target(loo0, 0.8)), 5000) and row.start == "coslow"
    assert res.without_coslow == []


def test_bad_settings_and_too_few_coslow_tasks():
    curves = {"steep": curve(STEEP, "steep")}
    with pytest.raises(DataeffError, match="target 1.0 is outside"): annotation_savings(curves, target=[1.0])
    with pytest.raises(DataeffError, match="at least 3 tasks"): annotation_savings(curves, coslow={"steep": 0.3})
    with pytest.raises(DataeffError, match="predictor 'oracle' is not one of"): annotation_savings(curves, predictors=["oracle"])


@pytest.mark.parametrize("argv,msg", [
    (["--target", "0"], "target 0.0 is outside"),
    (["--noise", "-0.1"], "--noise -0.1: an SD in accuracy"),
    (["--seeds", "1", "1"], "--seeds [1, 1]: give one seed or more, each once"),
    (["--seeds", "-2"], "--seeds -2: seeds are whole numbers >= 0"),
    (["--round-cost", "-5"], "--round-cost -5.0: a number of annotations >= 0"),
    (["--round-cost", "300", "300"], "--round-cost [300.0, 300.0]: give each value once"),
    (["--confidence", "0.2"], "--confidence 0.2: a probability in [0.5, 1)"),
])
def test_cli_bad_input_is_one_line_exit_2(reference, capsys, argv, msg):
    assert main(["savings", str(reference/"results"/"finetune_results"), "--curve-prefix", "llama", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err


def _mistral_subset(reference, folder, tasks):
    "A results folder with every Llama and Qwen curve and these Mistral ones (the human-level file beside it): a smaller Mistral to simulate."
    (folder/"finetune_results").mkdir(parents=True)
    src = reference/"results"/"finetune_results"
    for f in src.iterdir():
        if not f.name.startswith("mistral_") or any(f.name == f"mistral_{t}_full_result_v2.json" for t in tasks): os.symlink(f, folder/"finetune_results"/f.name)
    os.symlink(reference/"results"/"human_eval.json", folder/"human_eval.json")
    return folder/"finetune_results"


def test_cli_noisy_seeds_write_every_predictor_with_failures_and_cost(reference, tmp_path, capsys):
    "dataeff savings on Mistral curves with noise over three seeds (three of its tasks, leave-one-task-out on all families: a full run takes minutes)."
    results = _mistral_subset(reference, tmp_path/"results", ("circa", "hyperbaton", "web_of_lies"))
    out, png = tmp_path/"s.json", tmp_path/"s.png"
    assert main(["savings", str(results), "--curve-prefix", "mistral", "--noise", "0.012", "--seeds", "0", "1", "2", "--round-cost", "100", "300",
                 "--json", str(out), "--plot", str(png)]) == 0
    d = json.loads(out.read_text())
    assert d["settings"]["seeds"] == [0, 1, 2] and d["settings"]["noise"] == 0.012 and png.stat().st_size > 0
    tot = pd.DataFrame(d["totals"])
    assert set(tot.predictor) == set(PREDICTORS) and set(RIVALS) < set(tot.predictor)
    for col in ("stopped_short", "gave_up", "cost", "rounds", "total_cost", "perfect_information", "ratio", "total_cost_sd"):
        assert tot[col].notna().all(), col
    assert len(tot) == 2*3*len(PREDICTORS)  # round costs × targets (0.8 0.9 0.95) × predictors
    np.testing.assert_allclose(tot.total_cost, tot.cost + tot.round_cost*tot.rounds, rtol=1e-12)  # float64 sums of whole numbers
    rows = pd.DataFrame(d["rows"])
    assert sorted(rows.seed.unique()) == [0, 1, 2] and set(rows.task) == {"circa", "hyperbaton", "web_of_lies"}
    assert "budget models fitted on llama (40 curves), mistral (3 curves), qwen (30 curves)" in capsys.readouterr().out


def test_cli_paper_family_is_the_released_curves_with_the_papers_coslow(reference, tmp_path, capsys):
    from dataeff.paper import paper_coslow
    coslow = paper_coslow()["coslow"]
    pd.DataFrame(dict(task=list(coslow), coslow=list(coslow.values()))).to_csv(tmp_path/"coslow.csv", index=False)
    assert main(["savings", str(reference/"results"/"finetune_results"), "--curve-prefix", "llama", "--coslow-table", str(tmp_path/"coslow.csv"),
                 "--target", "0.95", "--json", str(tmp_path/"given.json")]) == 0
    assert main(["savings", "--paper", "llama", "--target", "0.95", "--json", str(tmp_path/"paper.json")]) == 0
    given = json.loads((tmp_path/"given.json").read_text())
    assert json.loads((tmp_path/"paper.json").read_text()) == given
    tot = {r["predictor"]: r for r in given["totals"]}
    assert tot["grid"]["tasks"] == 30 and tot["grid"]["rounds"] == 175 and tot["grid"]["cost"] == 87550  # the 30 Llama tasks that reach 0.95
    assert tot["plan"]["total_cost"] < min(tot[p]["total_cost"] for p in RIVALS) and tot["plan"]["stopped_short"] == 0
    assert len(given["without_coslow"]) == 16
    capsys.readouterr()
    assert main(["savings", str(reference/"results"/"finetune_results"), "--paper", "llama"]) == 2
    assert main(["savings", "--paper", "llama", "--curve-prefix", "llama"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--paper FAMILY" in err[0] and "--curve-prefix goes with a RESULTS folder" in err[1]
