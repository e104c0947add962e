import json, math
import numpy as np, pytest
from dataeff.cli import main, build_parser
from dataeff.plan import make_plan, next_budget, simulate_plan, PLAN_BUDGETS
from dataeff.budgets import default_budget_model
from dataeff.curves import task_curve
from dataeff.coslow import CoslowReport


def coslow_json(path, coslow, model):
    "A CoS-Low report as dataeff coslow (or estimate, as coslow.json) writes it."
    path.write_text(json.dumps(CoslowReport(coslow=coslow, interval=[coslow - 0.05, coslow + 0.05], level=0.95, k=8, seed=0, model=model).to_dict()))
    return path


def _one_line_error(capsys, argv, msg):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    return err


@pytest.mark.parametrize("argv,msg", [
    (["--target", "1.5"], "--target 1.5: targets are normalised scores"),
    (["--target", "0"], "--target 0.0: targets are normalised scores"),
    (["--zero-shot", "0.5", "--ceiling", "0.9", "--target-accuracy", "0.95"], "target accuracy 0.95 must lie between the zero-shot score 0.5 and the ceiling 0.9"),
    (["--zero-shot", "0.5", "--target-accuracy", "0.45"], "target accuracy 0.45 must lie between the zero-shot score 0.5"),
    (["--measured", "0:0.5,200:0.7,100:0.8", "--target", "0.9"], "out of order: budget 100 comes after 200"),
    (["--measured", "0:0.5,200:0.95", "--ceiling", "0.9", "--target", "0.5"], "measured score at budget 200 0.95 is above the ceiling 0.9"),
    (["--measured", "200:0.7", "--target", "0.9"], "need the zero-shot score"),
    (["--measured", "0:0.5,abc", "--target", "0.9"], "--measured 'abc'"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, msg):
    _one_line_error(capsys, argv, msg)


def test_coslow_report_of_another_model_is_refused(tmp_path, capsys):
    report = coslow_json(tmp_path/"r.coslow.json", 0.4, "HuggingFaceTB/SmolLM2-135M-Instruct")
    err = _one_line_error(capsys, [str(report), "--family", "mistral-7b-v0.3"], "not for HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "mistralai/Mistral-7B-Instruct-v0.3" in err and "--borrow-calibration" in err
    assert main(["plan", str(report), "--family", "mistral-7b-v0.3", "--borrow-calibration"]) == 0
    out = capsys.readouterr().out
    assert "note: The calibration `mistral-7b-v0.3` was fitted for mistralai/Mistral-7B-Instruct-v0.3" in out and "indicative" in out
    assert "CoS-Low 0.400" in out and "(mistral-7b-v0.3)" in out


def test_estimate_folder_and_curve_file_are_read(tmp_path, capsys):
    (tmp_path/"est").mkdir()
    coslow_json(tmp_path/"est"/"coslow.json", 0.43, "meta-llama/Llama-3.1-8B-Instruct")
    (tmp_path/"est"/"report.json").write_text(json.dumps({"model": "meta-llama/Llama-3.1-8B-Instruct", "calibration": {"family": "llama-3.1-8b"}}))
    curve = tmp_path/"llama_toy_full_result_v2.json"
    curve.write_text(json.dumps({"0": {"accuracy": 0.55}, "200": {"accuracy": 0.7}}))
    out = tmp_path/"plan.json"
    assert main(["plan", str(tmp_path/"est"), "--curve", str(curve), "--target-accuracy", "0.85", "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    direct = make_plan(target_accuracy=0.85, coslow=0.43, calibration="llama-3.1-8b", measured=[(0, 0.55), (200, 0.7)])
    assert plan["next_budget"] == direct.next_budget and plan["zero_shot"] == 0.55
    assert plan["measured"] == [[200.0, 0.7, pytest.approx((0.7 - 0.55)/0.45)]]  # float64, a few operations (approx's default 1e-6 is far above)
    (tmp_path/"est"/"coslow.json").unlink()  # an estimate still waiting for its labels has no coslow.json yet
    (tmp_path/"est"/"report.json").write_text(json.dumps({"status": "needs_annotations", "coslow": None}))
    _one_line_error(capsys, [str(tmp_path/"est"), "--target", "0.9"], "no CoS-Low here")


def test_help_documents_every_option(capsys):
    parser = build_parser("plan")
    sub = next(a for a in parser._actions if a.dest == "command").choices["plan"]
    for action in sub._actions:
        if action.dest != "help": assert action.help, action.dest
    with pytest.raises(SystemExit): main(["plan", "--help"])
    out = capsys.readouterr().out
    for opt in ("--measured", "--curve", "--zero-shot", "--ceiling", "--target", "--target-accuracy", "--round-cost", "--family", "--json", "--borrow-calibration"):
        assert opt in out


def test_next_budget_is_the_optimum_of_the_expected_cost():
    "On a 3-budget grid, the programme's first choice and cost match an enumeration of every plan."
    belief = default_budget_model().prior(0.45, 0.1)
    grid, R = (200, 1000, 5000), 300
    F = belief.cdf(0.9, grid)
    def plan_cost(seq):  # run the budgets of `seq` in turn until reached; stop after the last
        cost, p_prev = 0.0, 0.0
        for i, b in enumerate(seq):
            p = F[grid.index(b)]
            cost += (1 - p_prev)*R + (p - p_prev)*b
            p_prev = p
        return cost + (1 - p_prev)*seq[-1]
    plans = [(200, 1000, 5000), (200, 5000), (1000, 5000), (5000,)]  # every plan must end at the largest budget
    best = min(plans, key=plan_cost)
    b, c, _ = next_budget(belief, 0.9, R, budgets=grid)
    assert b == best[0] and c == pytest.approx(plan_cost(best), rel=1e-9)  # the same float64 sums in another order: ~1e-15


def test_simulate_plan_reaches_the_target_on_a_curve():
    c = task_curve("toy", {0: 0.2, 50: 0.3, 100: 0.4, 200: 0.55, 500: 0.7, 1000: 0.8, 2500: 0.85, 5000: 0.9}, human=0.9)
    cost, rounds, history = simulate_plan(c, 0.8, default_budget_model().prior(None))
    assert math.isfinite(cost) and rounds == len(history) >= 1 and history[-1][1] >= 0.8
    assert all(b1 < b2 for (b1, _, _), (b2, _, _) in zip(history, history[1:]))
    from dataeff.savings import noisy_observer
    noisy = [simulate_plan(c, 0.8, default_budget_model().prior(None), observe=noisy_observer(0.05, seed))[2] for seed in (0, 0, 1)]
    assert noisy[0] == noisy[1] and noisy[0] != noisy[2]  # seeded


def test_make_plan_takes_the_target_as_a_keyword_and_counts_the_labelled_sample():
    from dataeff.core import DataeffError
    assert make_plan().target == 0.9 and make_plan(target=0.8).target == 0.8
    with pytest.raises(DataeffError, match=r"--target 1\.2: targets are normalised scores"): make_plan(target=1.2)
    plan = make_plan(target=0.9, coslow=0.4, calibration="llama-3.1-8b", labelled=32)
    assert plan.labelled == 32 and plan.next_budget > 32
    assert f"{plan.next_budget - 32:,} more than the 32 labelled so far" in plan.next_step()
    assert "none labelled so far" in make_plan(target=0.9, coslow=0.4).next_step()
