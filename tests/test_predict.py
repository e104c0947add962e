import json, math, warnings
import numpy as np, pytest
from scipy import stats
from dataeff.cli import main
from dataeff.core import DataeffError
from dataeff.calibrate import CALIBRATIONS, Calibration
from dataeff.coslow import CoslowReport
from dataeff.predict import predict


def test_worked_example_of_the_paper():
    p = predict(0.65, c=0.54, intercept=0.31, target=[0.9], shape="power")
    assert p.auc == pytest.approx(0.661, abs=1e-12)  # float64, a few operations: a few ulps
    assert p.exponent == pytest.approx(0.339/0.661, rel=1e-12)  # float64, a few operations: a few ulps
    assert p.budgets[0] == pytest.approx(1028, abs=1)  # the paper's budget, an integer
    # float64 reference of n = 2^(t^(1/p) log2 5000)
    assert p.budgets[0] == pytest.approx(2**(0.9**(0.661/0.339)*math.log2(5000)), rel=1e-12)  # float64 pow/log: ~10 ulps relative


def test_named_family_uses_published_coefficients_and_the_scatter():
    p = predict(0.5, "qwen2.5-14b")
    assert p.auc == pytest.approx(0.526*0.5 + 0.305, rel=1e-12)  # float64, a few operations: a few ulps
    half = stats.norm.ppf(0.975)*0.125  # the scatter assumed equal to Llama's
    np.testing.assert_allclose(p.auc_interval, [p.auc - half, p.auc + half], rtol=1e-12)  # float64, a few operations: a few ulps
    assert "assumed equal to Llama" in p.interval_sources[0] and "curve shapes" in p.interval_sources[-1]


def test_learned_interval_is_the_budget_models_gaussian():
    from dataeff.budgets import default_budget_model
    bm = default_budget_model()
    cal = Calibration(family="toy", c=0.6, intercept=0.3, scatter_sd=0.1, scatter_source="test")
    p = predict(0.5, cal, target=[0.7])
    k = bm.targets.index(0.7)
    m, sd = bm.alpha[k] + bm.beta[k]*0.6, math.sqrt(bm.cov[k][k] + bm.beta[k]**2*0.01)
    assert math.log2(p.budgets[0]) == pytest.approx(m, abs=1e-9)  # float64 log2/exp2 of a budget ≤ 5000: ~1e-15
    lo, hi = np.clip([m - stats.norm.ppf(0.975)*sd, m + stats.norm.ppf(0.975)*sd], math.log2(50), math.log2(5000))
    np.testing.assert_allclose(np.log2(p.budget_intervals[0]), [lo, hi], atol=1e-9)  # likewise


def test_se_only_calibration_says_its_interval_is_too_narrow():
    cal = Calibration(family="toy", c=0.6, intercept=0.3, c_se=0.1, intercept_se=0.03, cov_c_intercept=-0.002, residual_sd=0.1, n_tasks=12)
    p = predict(0.5, cal, coslow_interval=(0.45, 0.58))
    assert p.auc_sd == pytest.approx(math.sqrt(0.25*0.01 + 0.03**2 - 2*0.5*0.002 + 0.01), rel=1e-12)  # float64, a few operations: a few ulps
    assert "too narrow" in p.interval_sources[0] and "not added" in p.interval_sources[1]
    for b, (blo, bhi) in zip(p.budgets, p.budget_intervals): assert blo <= b <= bhi
    assert p.budgets == sorted(p.budgets)


def test_power_shape_without_any_uncertainty_has_no_interval():
    p = predict(0.4, c=0.5, intercept=0.3, shape="power")
    assert p.auc_interval is None and p.budget_intervals is None


def test_out_of_range_auc_clamps_with_warning_or_refuses():
    with pytest.warns(UserWarning, match="clamped"):
        p = predict(0.95, "mistral-7b-v0.3")
    assert p.auc == 0.99 and p.warnings
    with pytest.raises(DataeffError, match="outside"):
        predict(0.95, "mistral-7b-v0.3", clamp=False)


@pytest.mark.parametrize("kw,msg", [
    (dict(coslow=0.5, calibration="llama-3.1-8b", target=[0.0]), "target 0.0 is outside"),
    (dict(coslow=0.5, calibration="llama-3.1-8b", target=[1.2]), "target 1.2 is outside"),
    (dict(coslow=1.5, calibration="llama-3.1-8b"), "CoS-Low 1.5"),
    (dict(coslow=0.5, calibration="unknown-fam"), "unknown family"),
    (dict(coslow=0.5, c=0.5), "either a calibration"),
    (dict(coslow=0.5, calibration="llama-3.1-8b", c=0.5, intercept=0.3), "either a calibration"),
    (dict(coslow=0.5, calibration="llama-3.1-8b", shape="logistic"), "shape 'logistic'"),
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
    (["--coslow", "0.5", "--c", "5", "--intercept", "3", "--no-clamp"], "outside (0.01, 0.99)"),
    (["--coslow", "0.5", "--family", "llama-3.1-8b", "--target", "1.5"], "target 1.5"),
    (["--coslow", "0.5", "--c", "0.5"], "--c and --intercept go together"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, msg, capsys):
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_cli_clamps_out_of_range_by_default(capsys):
    assert main(["predict", "--coslow", "0.5", "--c", "5", "--intercept", "3"]) == 0
    assert "warning: AUC'" in capsys.readouterr().out


def coslow_file(path, model, coslow=0.5):
    "A CoS-Low report as dataeff coslow writes it, measured with `model`."
    report = CoslowReport(coslow=coslow, interval=[coslow - 0.05, coslow + 0.05], level=0.95, k=8, seed=0, model=model)
    path.write_text(json.dumps(report.to_dict()))
    return path


def test_cli_predict_from_a_report_uses_its_interval_and_refuses_a_borrowed_calibration(tmp_path, capsys):
    own = coslow_file(tmp_path/"llama.json", CALIBRATIONS["llama-3.1-8b"].model_id)
    assert main(["predict", str(own), "--json", str(tmp_path/"p.json")]) == 0
    assert "note:" not in capsys.readouterr().out
    d = json.loads((tmp_path/"p.json").read_text())
    assert d["coslow"] == 0.5 and d["coslow_interval"] == [0.45, 0.55] and d["calibration"] == "llama-3.1-8b"
    other = coslow_file(tmp_path/"small.json", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert main(["predict", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "fitted for meta-llama/Llama-3.1-8B-Instruct, not for HuggingFaceTB/SmolLM2-135M-Instruct" in err and "--borrow-calibration" in err
    assert len(err.splitlines()) == 1
    assert main(["predict", str(other), "--borrow-calibration"]) == 0
    out = capsys.readouterr().out
    assert "note: The calibration `llama-3.1-8b` was fitted for meta-llama/Llama-3.1-8B-Instruct" in out and "indicative" in out
    assert "annotate about" in out
    assert main(["predict", str(own), "--coslow", "0.5"]) == 2 and "not both" in capsys.readouterr().err
    assert main(["predict", str(own), "--interval", "0.4", "0.6"]) == 2 and "a report brings its own interval" in capsys.readouterr().err
