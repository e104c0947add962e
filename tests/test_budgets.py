import math
import numpy as np, pytest
from dataeff.budgets import BudgetModel, default_budget_model, fit_budget_model, BUDGET_TARGETS
from dataeff.core import DataeffError
from dataeff.curves import task_curve
from dataeff.paper import paper_curves_by_family


def test_shipped_model_is_the_fit_on_all_released_curves(reference):
    fit = fit_budget_model(paper_curves_by_family(reference))
    shipped = default_budget_model()
    np.testing.assert_allclose(shipped.alpha, fit.alpha, rtol=0, atol=1e-12)  # float64 least squares on 100 curves, JSON round trip exact: far below 1e-12
    np.testing.assert_allclose(shipped.beta, fit.beta, rtol=0, atol=1e-12)  # float64 least squares on 100 curves, JSON round trip exact: far below 1e-12
    np.testing.assert_allclose(shipped.cov, fit.cov, rtol=0, atol=1e-12)  # float64 least squares on 100 curves, JSON round trip exact: far below 1e-12
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
    with pytest.raises(DataeffError, match="curves to fit"):
        fit_budget_model({"toy": dict(list(curves.items())[:5])}, targets=(0.3, 0.5))


def test_measured_points_narrow_and_bound_the_belief():
    b0 = default_budget_model().prior(0.4, 0.1)
    b1 = b0.update(200, 0.5)
    w = lambda b: math.log2(b.interval(0.8)[1]/b.interval(0.8)[0])
    assert w(b1) < w(b0)
    assert b1.interval(0.8)[0] >= 200          # 0.5 at 200: 0.8 needs more than 200
    assert b1.update(1000, 0.85).budget(0.8) <= 1000  # reached at 1000
    assert b1.cdf(0.8, [200])[0] == 0.0


@pytest.mark.parametrize("auc,sd,msg", [(1.3, 0.1, "AUC' 1.3"), (0.4, -0.1, "SD -0.1"), (float("nan"), 0.1, "AUC' nan")])
def test_bad_prior_inputs(auc, sd, msg):
    with pytest.raises(DataeffError, match=msg):
        default_budget_model().prior(auc, sd)
