import math
import numpy as np, pytest
from dataeff.budgets import (BudgetModel, NoiseModel, TargetBelief, curve_at, default_budget_model, fit_budget_model, typical_curves, u_grid,
                             BUDGET_TARGETS)
from dataeff.core import DataeffError
from dataeff.curves import task_curve
from dataeff.paper import paper_curves_by_family


def test_shipped_model_is_the_fit_on_all_released_curves(reference):
    fit = fit_budget_model(paper_curves_by_family(reference))
    shipped = default_budget_model()
    np.testing.assert_allclose(shipped.alpha, fit.alpha, rtol=0, atol=1e-12)  # float64 least squares on 100 curves, JSON round trip exact: far below 1e-12
    np.testing.assert_allclose(shipped.beta, fit.beta, rtol=0, atol=1e-12)  # float64 least squares on 100 curves, JSON round trip exact: far below 1e-12
    np.testing.assert_allclose(shipped.cov, fit.cov, rtol=0, atol=1e-12)  # float64 least squares on 100 curves, JSON round trip exact: far below 1e-12
    np.testing.assert_allclose(shipped.kappa, fit.kappa, rtol=0, atol=1e-12)  # the same float64 sums over the same curves
    assert shipped.tasks == fit.tasks and shipped.n_curves == fit.n_curves


def test_fit_recovers_a_common_shape_shifted_in_log_budget():
    "Curves of one shape shifted along log2 budget: log2 n*(t) falls with AUC and the shape spread is small."
    rng = np.random.default_rng(0)
    curves = {}
    for i in range(30):
        shift = rng.uniform(-1, 1)
        scores = {0: 0.0, **{b: min(1.0, max(0.0, (math.log2(b) - 5 + shift)/8)) for b in (50, 100, 200, 500, 1000, 2500, 5000)}}
        curves[f"t{i}"] = task_curve(f"t{i}", scores, human=1.0)
    m = fit_budget_model({"toy": curves}, targets=(0.3, 0.5))
    assert all(b < 0 for b in m.beta)
    assert np.sqrt(np.diag(m.cov)).max() < 0.3  # against ~0.6 for the spread of the shifts themselves
    assert len(m.kappa) == 2 and all(k > 0 for k in m.kappa)
    with pytest.raises(DataeffError, match="curves to fit"):
        fit_budget_model({"toy": dict(list(curves.items())[:5])}, targets=(0.3, 0.5))


def test_typical_curves_fall_as_the_budget_needed_grows():
    prior = default_budget_model().prior(0.4, 0.1)
    m, s = prior.log2_budget(0.8)
    u = u_grid(m, s, 5000)
    T, Z = typical_curves(prior.mean, prior.cov, prior.targets, 0.8, u)
    assert (np.diff(Z, axis=0) >= -1e-12).all() and (np.diff(Z, axis=1) > 0).all()  # knots rise with u; strictly with the level
    for b in (1, 50, 300, 2000, 5000, 40000):
        g = curve_at(T, Z, b)
        assert (np.diff(g) <= 1e-12).all() and (g >= 0).all() and (g <= 1).all()  # float64 interpolation: ulps


def test_measured_points_narrow_and_bound_the_belief():
    b0 = default_budget_model().belief(0.8, NoiseModel(0.0), auc=0.4, auc_sd=0.1)
    b1 = b0.update(200, 0.5)
    w = lambda b: math.log2(b.quantile(0.975)/b.quantile(0.025))
    assert w(b1) < w(b0)
    assert b1.cdf(200)[0] == 0.0 and b1.quantile(0.025) >= 200  # 0.5 at 200, without noise: 0.8 needs more than 200
    b2 = b1.update(1000, 0.85)
    assert b2.cdf(1000)[0] == 1.0 and b2.quantile(0.5) <= 1000  # reached at 1000
    noisy = default_budget_model().belief(0.8, NoiseModel(0.05), auc=0.4, auc_sd=0.1).update(200, 0.5)
    assert 0 < noisy.cdf(200)[0] < 0.05  # with noise, 0.5 at 200 makes 0.8 there unlikely, not impossible


def test_a_score_below_zero_shot_or_above_the_ceiling_counts():
    b = default_budget_model().belief(0.9, NoiseModel(0.024))
    low, zero, high = b.update(200, -0.2), b.update(200, 0.0), b.update(200, 1.1)
    assert low.quantile(0.5) > zero.quantile(0.5) > b.quantile(0.5)  # below zero-shot: worse news than zero-shot, not the prior again
    assert high.cdf(200)[0] > 0.9


def test_lowering_a_score_never_raises_the_chance_of_being_done():
    "Property over random beliefs, runs and noise: P(n* <= c) never rises at any c when one score is lowered."
    model, rng = default_budget_model(), np.random.default_rng(3)
    grid = np.geomspace(50, 5000, 49)
    for case in range(60):
        auc = None if rng.random() < 0.3 else float(rng.uniform(0.1, 0.8))
        t, sd = float(rng.choice([0.3, 0.5, 0.7, 0.8, 0.9, 0.95])), float(rng.choice([0.0, 0.012, 0.04, 0.2, 0.5]))
        b = model.belief(t, NoiseModel(sd), auc=auc, auc_sd=0.0 if auc is None else float(rng.uniform(0, 0.15)))
        budgets = np.sort(rng.choice(grid[:-1], int(rng.integers(1, 5)), replace=False))
        scores = rng.uniform(-0.5, 1.3, len(budgets))
        if sd == 0: scores[:-1] = np.minimum(scores[:-1], t - 0.01)  # noise-free, a run that reached the target ends the loop
        lowered = scores.copy(); lowered[rng.integers(len(scores))] -= rng.uniform(0.001, 0.6)
        one, two = b, b
        for n, y, z in zip(budgets, scores, lowered): one, two = one.update(n, y), two.update(n, z)
        assert (two.cdf(grid) <= one.cdf(grid) + 1e-12).all(), (case, budgets, scores, lowered)  # float64 sums of ≤ 400 weights: ulps


def test_noise_model_learns_from_repeats_and_its_stopping_rule():
    noise = NoiseModel(0.04)
    assert noise.sd == 0.04 and noise.nu == 8
    assert noise.p_reached([0.9], 0.9) == pytest.approx(0.5, abs=1e-12)  # Student t at 0: exactly one half in float64
    assert noise.p_reached([0.9 + 1.3968*0.04], 0.9) == pytest.approx(0.9, abs=1e-4)  # the 0.9 quantile of t with 8 dof is 1.3968 (tables, 4 decimals)
    assert noise.p_reached([0.95, 0.95], 0.9) > noise.p_reached([0.95], 0.9)  # two runs are surer than one
    learned = noise.observe({100: [0.3], 500: [0.7, 0.9], 1000: [0.8, 0.8, 0.8]})
    assert learned.dof == 3 and learned.ss == pytest.approx(0.02, abs=1e-12)  # (0.1² + 0.1²), float64
    assert learned.sd == pytest.approx(math.sqrt((8*0.04**2 + 0.02)/11), rel=1e-12)
    assert NoiseModel(0.0).p_reached([0.9], 0.9) == 1.0 and NoiseModel(0.0).p_reached([], 0.9) == 0.0
    with pytest.raises(DataeffError, match="noise SD -1"): NoiseModel(-1)


@pytest.mark.parametrize("call,msg", [
    (lambda b: b.update(0, 0.5), "budget 0: a fine-tuning run needs a number of examples >= 1"),
    (lambda b: b.update(100, float("nan")), "score nan at budget 100 is not a number"),
])
def test_bad_runs_are_refused(call, msg):
    with pytest.raises(DataeffError, match=msg): call(default_budget_model().belief(0.9, NoiseModel(0.01)))


@pytest.mark.parametrize("auc,sd,msg", [(1.3, 0.1, "AUC' 1.3"), (0.4, -0.1, "SD -0.1"), (float("nan"), 0.1, "AUC' nan")])
def test_bad_prior_inputs(auc, sd, msg):
    with pytest.raises(DataeffError, match=msg):
        default_budget_model().prior(auc, sd)


def test_a_model_without_spread_says_so():
    m = default_budget_model()
    old = BudgetModel(**{**m.to_dict(), "kappa": None})
    with pytest.raises(DataeffError, match="no spread"): old.belief(0.9, NoiseModel(0.01))
    with pytest.raises(DataeffError, match="target 1.2 is outside"): TargetBelief.from_prior(m.prior(), 1.2, 0.7, NoiseModel(0.01))
