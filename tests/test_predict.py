import json, math, warnings
import numpy as np, pytest
from scipy import stats
from dataeff.cli import main
from dataeff.core import DataeffError
from dataeff.calibrate import Calibration
from dataeff.predict import predict


def test_worked_example_of_the_paper():
    p = predict(0.65, c=0.54, intercept=0.31, targets=[0.9])
    assert p.auc == pytest.approx(0.661, abs=1e-12)  # float64, a few operations: a few ulps
    assert p.exponent == pytest.approx(0.339/0.661, rel=1e-12)
    assert p.budgets[0] == pytest.approx(1028, abs=1)  # the paper's budget, an integer
    # float64 reference of n = 2^(t^(1/p) log2 5000)
    assert p.budgets[0] == pytest.approx(2**(0.9**(0.661/0.339)*math.log2(5000)), rel=1e-12)  # float64 pow/log: ~10 ulps relative


def test_named_family_uses_published_coefficients_and_se_only_interval():
    p = predict(0.5, "qwen2.5-14b")
    assert p.auc == pytest.approx(0.526*0.5 + 0.305, rel=1e-12)
    half = stats.norm.ppf(0.975)*math.hypot(0.5*0.025, 0.003)
    np.testing.assert_allclose(p.auc_interval, [p.auc - half, p.auc + half], rtol=1e-12)
    assert any("scatter of tasks" in s for s in p.interval_sources)


def test_intervals_combine_in_quadrature_and_order_budgets():
    cal = Calibration("toy", 0.6, 0.3, c_se=0.1, intercept_se=0.03, cov_c_intercept=-0.002, residual_sd=0.1, n_tasks=12)
    p = predict(0.5, cal, coslow_interval=(0.45, 0.58))
    reg = stats.t.ppf(0.975, 10)*math.sqrt(0.25*0.01 + 0.03**2 - 2*0.5*0.002 + 0.01)
    lo, hi = 0.6 - math.hypot(0.6*0.05, reg), 0.6 + math.hypot(0.6*0.08, reg)
    np.testing.assert_allclose(p.auc_interval, [lo, hi], rtol=1e-12)  # float64, a few operations
    for b, (blo, bhi) in zip(p.budgets, p.budget_intervals): assert blo < b < bhi
    assert p.budgets == sorted(p.budgets)


def test_without_any_uncertainty_there_is_no_interval():
    p = predict(0.4, c=0.5, intercept=0.3)
    assert p.auc_interval is None and p.budget_intervals is None


def test_out_of_range_auc_clamps_with_warning_or_refuses():
    with pytest.warns(UserWarning, match="clamped"):
        p = predict(0.95, "mistral-7b-v0.3")
    assert p.auc == 0.99 and p.warnings
    with pytest.raises(DataeffError, match="outside"):
        predict(0.95, "mistral-7b-v0.3", clamp=False)


@pytest.mark.parametrize("kw,msg", [
    (dict(coslow=0.5, calibration="llama-3.1-8b", targets=[0.0]), "target 0.0 is outside"),
    (dict(coslow=0.5, calibration="llama-3.1-8b", targets=[1.2]), "target 1.2 is outside"),
    (dict(coslow=1.5, calibration="llama-3.1-8b"), "CoS-Low 1.5"),
    (dict(coslow=0.5, calibration="unknown-fam"), "unknown family"),
    (dict(coslow=0.5, c=0.5), "either a calibration"),
    (dict(coslow=0.5, calibration="llama-3.1-8b", c=0.5, intercept=0.3), "either a calibration"),
])
def test_bad_input(kw, msg):
    with pytest.raises(DataeffError, match=msg):
        predict(**kw)


def test_cli_predict_json_plot(tmp_path, capsys):
    out, png = tmp_path/"p.json", tmp_path/"p.png"
    assert main(["predict", "--coslow", "0.65", "--interval", "0.6", "0.7", "--family", "llama-3.1-8b", "--target", "0.8", "0.9",
                 "--json", str(out), "--plot", str(png)]) == 0
    d = json.loads(out.read_text())
    assert d["targets"] == [0.8, 0.9] and len(d["budget_intervals"]) == 2 and png.stat().st_size > 0
    assert "annotate about" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["--coslow", "0.5", "--family", "nope"], "unknown family"),
    (["--coslow", "0.5", "--c", "5", "--intercept", "3"], "outside (0.01, 0.99)"),
    (["--coslow", "0.5", "--family", "llama-3.1-8b", "--target", "1.5"], "target 1.5"),
    (["--coslow", "0.5", "--c", "0.5"], "--c needs --intercept"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, msg, capsys):
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_cli_clamp_flag_allows_out_of_range(capsys):
    assert main(["predict", "--coslow", "0.5", "--c", "5", "--intercept", "3", "--clamp"]) == 0
    assert "warning: AUC'" in capsys.readouterr().out
