import json, math
import numpy as np, pytest
from dataeff.cli import main, build_parser
from dataeff.plan import PLAN_BUDGETS, advise, cost_to_go, make_plan
from dataeff.budgets import NoiseModel, default_budget_model
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
    (["--measured", "0:0.5,0:0.5", "--target", "0.9"], "budget 0 is the zero-shot score; give it once, first"),
    (["--noise-sd", "-0.01"], "--noise-sd -0.01: an SD in accuracy, >= 0 and below 1"),
    (["--noise-sd", "1.5"], "--noise-sd 1.5: an SD in accuracy"),
    (["--noise-sd", "nan"], "--noise-sd nan: an SD in accuracy"),
    (["--confidence", "0.3"], "--confidence 0.3: a probability in [0.5, 1)"),
    (["--confidence", "1"], "--confidence 1.0: a probability in [0.5, 1)"),
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
    for opt in ("--measured", "--curve", "--zero-shot", "--ceiling", "--target", "--target-accuracy", "--round-cost", "--family", "--json",
                "--borrow-calibration", "--noise-sd", "--confidence"):
        assert opt in out
    words = " ".join(out.split())  # argparse wraps the help
    assert "the measurement noise assumed" in words and "has reached the target is at least this" in words


def test_cost_to_go_is_the_optimum_of_the_expected_cost():
    "On a 3-budget grid without noise (a run stops the loop exactly when the target is reached), the programme's first choice and cost match an enumeration of every plan."
    belief = default_budget_model().belief(0.9, NoiseModel(0.0), auc=0.45, auc_sd=0.1)
    grid, R = (200, 1000, 5000), 300
    S = np.column_stack([belief.success(b, 0.9) for b in grid])
    w = belief.weights
    def plan_cost(seq):  # run the budgets of `seq` in turn until one reaches the target; failing at the last ends there
        cost, left = 0.0, np.ones(len(w))
        for b in seq:
            s = S[:, grid.index(b)]
            cost += w @ (left*(R + s*b))
            left = left*(1 - s)
        return cost + w @ (left*seq[-1])
    plans = [(200, 1000, 5000), (200, 5000), (1000, 5000), (5000,)]  # every plan must end at the largest budget
    best = min(plans, key=plan_cost)
    j, c, _, _ = cost_to_go(w, S, grid, R, 5000)
    assert grid[j] == best[0] and c == pytest.approx(plan_cost(best), rel=1e-9)  # the same float64 sums in another order: ~1e-15


def test_a_worse_score_never_lowers_the_budget_named_case(tmp_path, capsys):
    "Zero-shot 0.5, target 0.9, one run at 200: lowering its accuracy from 0.7 to 0.4 (below zero-shot) never lowers the advice nor raises P(done)."
    plans = {}
    for acc in (0.7, 0.55, 0.5, 0.4):
        assert main(["plan", "--measured", f"0:0.5,200:{acc}", "--target", "0.9", "--json", str(tmp_path/f"{acc}.json")]) == 0
        plans[acc] = json.loads((tmp_path/f"{acc}.json").read_text())
    out = capsys.readouterr().out
    assert "200 → 0.400 (-0.20, below zero-shot)" in out and "P(the true score at 200 has reached the target)" in out
    order = [plans[a] for a in (0.7, 0.55, 0.5, 0.4)]
    for hi, lo in zip(order, order[1:]):
        assert lo["next_budget"] >= hi["next_budget"] and lo["budget"] >= hi["budget"]
        assert lo["reach_probability"] <= hi["reach_probability"] + 1e-12 and lo["p_done"] <= hi["p_done"]  # float64 sums of ≤ 400 weights
    assert order[-1]["budget"] > order[0]["budget"] and order[-1]["reach_probability"] < order[0]["reach_probability"]  # and it does move
    report = coslow_json(tmp_path/"r.coslow.json", 0.43, "meta-llama/Llama-3.1-8B-Instruct")  # from a CoS-Low estimate, as a user would
    nxt = [make_plan(target=0.9, coslow=0.43, measured=[(0, 0.5), (200, a)]).next_budget for a in (0.7, 0.4)]
    assert nxt[1] >= nxt[0]
    assert main(["plan", str(report), "--measured", "0:0.5,200:0.4", "--target", "0.9", "--json", str(tmp_path/"c.json")]) == 0
    assert json.loads((tmp_path/"c.json").read_text())["next_budget"] == nxt[1]


def _random_case(rng, model):
    "Two beliefs that differ in one lowered score, and a round cost."
    auc = None if rng.random() < 0.3 else float(rng.uniform(0.1, 0.8))
    t, R = float(rng.choice([0.5, 0.7, 0.8, 0.85, 0.9, 0.95])), float(rng.choice([100, 300, 1000]))
    sd = float(rng.choice([0.0, 0.012, 0.04, 0.2]))
    b = model.belief(t, NoiseModel(sd), auc=auc, auc_sd=0.0 if auc is None else float(rng.uniform(0, 0.15)))
    budgets = np.sort(rng.choice(PLAN_BUDGETS[:-1], int(rng.integers(1, 4)), replace=False))
    scores = rng.uniform(-0.3, 1.1, len(budgets))
    if sd == 0: scores[:-1] = np.minimum(scores[:-1], t - 0.01)  # noise-free, a run that reached the target ends the loop: earlier runs fell short
    lowered = scores.copy(); lowered[rng.integers(len(scores))] -= rng.uniform(0.005, 0.5)
    one, two = b, b
    for n, y, z in zip(budgets, scores, lowered): one, two = one.update(n, y), two.update(n, z)
    return one, two, R


def test_a_worse_score_never_lowers_the_budget_on_random_beliefs():
    "Property: over random beliefs, runs and noise levels, lowering one score never lowers the advised budget nor raises P(done) or P(n* <= c)."
    model, rng = default_budget_model(), np.random.default_rng(7)
    for case in range(40):
        one, two, R = _random_case(rng, model)
        a, b = advise(one, R), advise(two, R)
        assert (b.budget or 5000) >= (a.budget or 5000) - 1e-9, (case, a, b)
        assert b.p_done <= a.p_done + 1e-12, (case, a, b)  # float64 cdf of arguments that only fell
        assert (two.cdf(PLAN_BUDGETS) <= one.cdf(PLAN_BUDGETS) + 1e-12).all(), case  # float64 sums of ≤ 400 weights: ulps


def test_repeats_teach_the_noise_and_a_repeat_can_be_the_advice(capsys):
    plan = make_plan(target=0.6, measured=[(0, 0.5), (500, 0.81), (500, 0.84)], noise_sd=0.02, confidence=0.95)
    assert plan.noise_dof == 9 and plan.noise_sd == pytest.approx(math.sqrt((8*0.02**2 + 2*0.015**2)/9), rel=1e-9)  # float64, a few operations
    assert (plan.action, plan.next_budget, plan.done) == ("remeasure", 500, False) and 0 < plan.p_settle < 1
    assert "fine-tune again on the same 500 examples" in plan.next_step() and "learned from repeated runs" in plan.summary()
    done = make_plan(target=0.6, measured=[(0, 0.5), (500, 0.81), (500, 0.84), (500, 0.83)], noise_sd=0.02, confidence=0.95)
    assert done.done and done.next_budget is None and done.p_done >= 0.95
    exact = make_plan(target=0.6, measured=[(0, 0.5), (500, 0.81)], noise_sd=0.0)
    assert exact.done and exact.p_done == 1.0  # without noise a score at the target is the target
    assert not make_plan(target=0.6, measured=[(0, 0.5), (500, 0.81)]).done  # 0.62 normalised, 0.6 target: within the noise


def test_make_plan_takes_the_target_as_a_keyword_and_counts_the_labelled_sample():
    from dataeff.core import DataeffError
    assert make_plan().target == 0.9 and make_plan(target=0.8).target == 0.8
    with pytest.raises(DataeffError, match=r"--target 1\.2: targets are normalised scores"): make_plan(target=1.2)
    plan = make_plan(target=0.9, coslow=0.4, calibration="llama-3.1-8b", labelled=32)
    assert plan.labelled == 32 and plan.next_budget > 32 and plan.action == "measure"
    assert f"{plan.next_budget - 32:,} more than the 32 labelled so far" in plan.next_step()
    assert "none labelled so far" in make_plan(target=0.9, coslow=0.4).next_step()
    assert plan.next_budget in PLAN_BUDGETS
