import dataclasses, json, os, subprocess, sys
import numpy as np
import pytest
import torch
from dataeff.core import FP64_U, DataeffError, gamma
from dataeff.data import Example, read_pool, write_examples
from dataeff.models import tiny_model, encode_example
from dataeff.tasks import make_task
from dataeff.gradients import LoraSpec, lora_adapter, per_example_gradients
from dataeff.coslow import CoslowBaselines, CoslowReport, compute_coslow, bootstrap_interval, median_upper_pairs, read_coslow_report
from dataeff.cli import main
from dataeff.similarity import cosine_error_bound
from conftest import reference_data

SPEC = LoraSpec(r=8, alpha=16)
LORA = dict(lora_r=8, lora_alpha=16)  # SPEC as compute_coslow's options
KEYS = ("coslow", "interval", "k", "excluded", "seed", "model", "dtype", "lora", "cosine_matrix", "ids", "losses", "grad_norms",
        "answer_tokens", "baselines", "timings")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)


def float64_cosines(chunks):
    x = torch.cat([c.double() for c in chunks], 1)
    x = x / x.norm(dim=1, keepdim=True)
    return (x @ x.T).numpy()


def cosine_tol(grads):
    "Guaranteed |Δcos| of pairwise_cosine on these gradients (same batches, so the same fp32 values) plus the float64 reference's own 2γ_D."
    return cosine_error_bound(grads.dim) + 2 * gamma(grads.dim, FP64_U)


def without_timings(report):
    return {k: v for k, v in report.to_dict().items() if k != "timings"}


def test_bootstrap_matches_a_direct_loop_and_drops_self_pairs():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(6, 30)) + 0.5
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cos = g @ g.T
    picks = np.random.default_rng(11).integers(0, 6, size=(400, 6))
    medians = []
    for p in picks:
        vals = [cos[p[i], p[j]] for i in range(6) for j in range(i + 1, 6) if p[i] != p[j]]
        if vals: medians.append(np.median(vals))
    assert bootstrap_interval(cos, 400, seed=11) == pytest.approx(list(np.quantile(medians, [0.025, 0.975])), abs=1e-12)  # the same float64 medians: a few ulps at most
    # a statistic that counted self-pairs (cosine 1) would push the upper end to 1
    assert bootstrap_interval(cos, 400, seed=11)[1] < 1
    assert median_upper_pairs(cos) == float(np.median(cos[np.triu_indices(6, 1)]))


def test_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(10, 40))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cos = g @ g.T
    lo, hi = bootstrap_interval(cos, seed=0)
    assert lo <= median_upper_pairs(cos) <= hi
    assert bootstrap_interval(cos, seed=0) == [lo, hi]
    assert bootstrap_interval(cos, seed=1) != [lo, hi]


def two_cluster_cosines(k=32, n_first=12, same=0.4, different=-0.2, noise=0.05, seed=1):
    "Pair cosines of k examples with binary answers: `same` within an answer, `different` across, plus Gaussian noise."
    rng = np.random.default_rng(seed)
    answer = np.arange(k) < n_first
    c = np.where(answer[:, None] == answer[None], same, different) + rng.normal(0, noise, (k, k))
    c = np.triu(c, 1)
    return c + c.T + np.eye(k)


def test_two_clusters_interval_spans_the_gap_with_the_point_inside():
    cos = two_cluster_cosines()  # 66 + 190 of 496 pairs share an answer: CoS-Low on the lower edge of the upper cluster
    point = median_upper_pairs(cos)
    lo, hi = bootstrap_interval(cos)
    assert 0.2 < point < 0.4 and lo < 0 < point < hi  # the median may jump to the lower cluster (near -0.2) under resampling
    pairs = cos[np.triu_indices(32, 1)]
    assert pairs.min() <= lo and hi <= pairs.max()  # a median of these pairs cannot leave their range


def test_bad_interval_arguments():
    cos = two_cluster_cosines()
    with pytest.raises(DataeffError, match="at least 2 usable examples"): bootstrap_interval(np.ones((1, 1)))
    with pytest.raises(DataeffError, match="strictly between 0 and 1"): bootstrap_interval(cos, level=0)
    with pytest.raises(DataeffError, match="strictly between 0 and 1"): bootstrap_interval(cos, level=1.5)
    with pytest.raises(DataeffError, match="at least 1"): bootstrap_interval(cos, n_resamples=0)


def test_report_is_complete_deterministic_and_matches_float64(tiny):
    model, tok = tiny
    sample, pool = make_task("web_of_lies", 6, seed=0), make_task("web_of_lies", 30, seed=1)
    report = compute_coslow(model, tok, sample, seed=3, **LORA, random_examples=pool[:6], resamples=300, progress=False)
    for key in KEYS: assert key in report.to_dict()
    assert report.k == 6 and report.excluded == [] and report.ids == [ex.id for ex in sample]
    baselines = dataclasses.asdict(report.baselines)
    assert set(baselines) == {"cos_sim_k", "grad_norm_k", "conf_avg_k", "zero_shot_accuracy", "zero_shot_answers"}
    assert all(isinstance(v, float) for k, v in baselines.items() if k != "zero_shot_answers")
    assert baselines["zero_shot_answers"]["n"] == 6 and len(baselines["zero_shot_answers"]["samples"]) == 2  # how the answers were read
    assert report.baselines.grad_norm_k == pytest.approx(np.mean(report.grad_norms))  # float64 mean of the same k values: a few ulps
    assert report.lora == {"r": 8, "alpha": 16, "dropout": 0.05, "targets": list(SPEC.targets), "include_lora_a": False}
    assert {"confidence", "gradients", "random_gradients", "cosine", "bootstrap"} <= set(report.timings)
    again = compute_coslow(model, tok, sample, seed=3, **LORA, random_examples=pool[:6], resamples=300, progress=False)
    assert json.dumps(without_timings(again)) == json.dumps(without_timings(report))  # bit-identical
    with lora_adapter(model, SPEC, seed=3) as peft_model:
        grads = per_example_gradients(peft_model, [encode_example(tok, ex) for ex in sample], [ex.id for ex in sample], progress=False)
    assert np.abs(np.array(report.cosine_matrix) - float64_cosines(grads.chunks)).max() <= cosine_tol(grads)
    other_seed = compute_coslow(model, tok, sample, seed=4, **LORA, baselines=False, progress=False)
    assert other_seed.coslow != report.coslow  # the seed reaches the LoRA init


def test_zero_shot_accuracy_and_confidence_from_given_scores(tiny):
    model, tok = tiny
    sample = [Example("a", "2 + 2 =", "4"), Example("b", "3 + 3 =", "6"), Example("c", "1 + 1 =", "2")]
    scores = [dict(id="a", avg_confidence=0.2, ppl=3.0, answer="4."), dict(id="b", avg_confidence=0.4, ppl=2.0, answer=" 7"),
              dict(id="c", avg_confidence=0.6, ppl=1.5, answer="2")]
    report = compute_coslow(model, tok, sample, **LORA, scores=scores, progress=False)
    assert report.baselines.zero_shot_accuracy == pytest.approx(2 / 3)
    assert report.baselines.conf_avg_k == pytest.approx(0.4)
    assert report.baselines.cos_sim_k is None


def test_bad_inputs(tiny):
    model, tok = tiny
    with pytest.raises(DataeffError, match="'b' has no target"):
        compute_coslow(model, tok, [Example("a", "x", "1"), Example("b", "y")], **LORA, progress=False)
    with pytest.raises(DataeffError, match="only 1 of 2 examples are usable"):
        compute_coslow(model, tok, [Example("a", "x", "1"), Example("b", "y", "")], **LORA, baselines=False, progress=False)
    with pytest.raises(DataeffError, match="c_attn"):
        compute_coslow(model, tok, make_task("web_of_lies", 3), lora_targets="c_attn", baselines=False, progress=False)


def test_read_coslow_report_takes_a_coslow_file_or_an_estimate_folder_and_refuses_anything_else(tiny, tmp_path):
    model, tok = tiny
    report = compute_coslow(model, tok, make_task("web_of_lies", 4, seed=0), **LORA, baselines=False, resamples=50, progress=False)
    (tmp_path / "r.json").write_text(json.dumps(report.to_dict()))
    back = read_coslow_report(tmp_path / "r.json")
    assert back == report == CoslowReport.from_dict(report.to_dict()) and isinstance(back.baselines, CoslowBaselines)
    done = tmp_path / "estimate"  # a complete estimate folder holds coslow.json beside report.json
    done.mkdir()
    (done / "coslow.json").write_text(json.dumps(report.to_dict()))
    (done / "report.json").write_text(json.dumps({"status": "complete"}))
    assert read_coslow_report(done) == report == read_coslow_report(done / "report.json")
    waiting = tmp_path / "waiting"
    waiting.mkdir()
    (waiting / "report.json").write_text(json.dumps({"status": "needs_annotations", "coslow": None}))
    with pytest.raises(DataeffError, match="no CoS-Low here"): read_coslow_report(waiting)
    (tmp_path / "bad.json").write_text(json.dumps({**report.to_dict(), "coslow": 1.5}))
    with pytest.raises(DataeffError, match="bad.json: not a CoS-Low report"): read_coslow_report(tmp_path / "bad.json")
    (tmp_path / "scores.json").write_text(json.dumps([{"id": "a", "avg_confidence": 0.5}]))
    with pytest.raises(DataeffError, match="scores.json: not a CoS-Low report"): read_coslow_report(tmp_path / "scores.json")
    (tmp_path / "broken.json").write_text("{oops")
    with pytest.raises(DataeffError, match="not valid JSON"): read_coslow_report(tmp_path / "broken.json")
    with pytest.raises(DataeffError, match="no such CoS-Low report"): read_coslow_report(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    tiny[0].save_pretrained(folder)
    tiny[1].save_pretrained(folder)
    return folder


def run_cli(args, capsys):
    status = main(args)
    return status, capsys.readouterr()


def test_cli_labelled_and_select(tiny_folder, tmp_path, capsys):
    common = ["--model", str(tiny_folder), "--lora-r", "8", "--lora-alpha", "16", "--resamples", "100"]
    write_examples(tmp_path / "labelled.jsonl", make_task("object_counting", 5, seed=2))
    status, out = run_cli(["coslow", str(tmp_path / "labelled.jsonl"), "--out", str(tmp_path / "r.json")] + common, capsys)
    assert status == 0, out.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["k"] == 5 and report["sample"] == "given" and "CoS-Low" in out.out
    assert "load_model" in report["timings"] and not list(tmp_path.glob(".r.json.*"))
    write_examples(tmp_path / "big.jsonl", make_task("object_counting", 12, seed=2))
    status, _ = run_cli(["coslow", str(tmp_path / "big.jsonl"), "--k", "4", "--no-baselines", "--out", str(tmp_path / "r4.json")] + common, capsys)
    assert status == 0 and json.loads((tmp_path / "r4.json").read_text())["sample"] == "random"
    write_examples(tmp_path / "pool.jsonl", make_task("object_counting", 30, seed=3))
    status, out = run_cli(["coslow", str(tmp_path / "pool.jsonl"), "--select", "--k", "3", "--out", str(tmp_path / "s.json")] + common, capsys)
    assert status == 0, out.err
    selected = json.loads((tmp_path / "s.json").read_text())
    assert selected["sample"] == "low_confidence" and selected["baselines"]["cos_sim_k"] is not None
    assert (tmp_path / "pool.scores.jsonl").is_file()


@pytest.mark.parametrize("case, message", [
    ("unlabelled", "has no target"),
    ("one_example", "at least 2"),
    ("bad_target", "q_proj"),
    ("float16", "not supported on cpu"),
    ("select_unlabelled", "selected examples have no target"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tiny_folder, tmp_path, capsys, case, message):
    path = tmp_path / "in.jsonl"
    examples = make_task("object_counting", 30, seed=4)
    extra = []
    if case == "unlabelled": examples = [Example("a", "x", "1"), Example("b", "y")]
    if case == "one_example": examples = examples[:1]
    if case == "bad_target": extra = ["--lora-targets", "q_proj,attn.c_proj"]
    if case == "float16": extra = ["--dtype", "float16"]
    if case == "select_unlabelled":
        examples = [Example(ex.id, ex.input) for ex in examples]
        extra = ["--select", "--k", "3"]
    write_examples(path, examples)
    status, out = run_cli(["coslow", str(path), "--model", str(tiny_folder), "--lora-r", "8", "--no-baselines"] + extra, capsys)
    assert status == 2
    lines = [line for line in out.err.splitlines() if "error" in line.lower()]  # (transformers may draw a loading bar first)
    assert len(lines) == 1 and lines[0].startswith("dataeff coslow: error: ") and message in lines[0], out.err
    assert out.err.strip().splitlines()[-1] == lines[0]
    assert not (tmp_path / "in.coslow.json").exists()


def test_console_exit_status():
    out = subprocess.run([sys.executable, "-m", "dataeff.cli", "coslow", "/nonexistent.jsonl"], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


REFERENCE = "results/coslow_data/low_conf_examples_annotated.json"


@pytest.fixture(scope="module")
def circa():
    ref = reference_data()
    if ref is None or not (ref / REFERENCE).is_file():
        if os.environ.get("CI"): pytest.fail("reference data missing in CI: shared/reference/paper-results is needed")
        pytest.skip("reference data not available")
    from dataeff.models import load_model
    model, tok = load_model()
    return model, tok, read_pool(ref / REFERENCE)


def test_reference_circa_deterministic_and_float64_exact(circa):
    model, tok, examples = circa
    assert len(examples) == 32 and all(ex.raw and ex.target is not None for ex in examples)
    report = compute_coslow(model, tok, examples, seed=0, baselines=False, progress=False)
    assert report.k == 32 and report.excluded == [] and report.model == "smollm2-135m"
    # second, independent run of the gradient step: the same numbers, bit for bit; its stored gradients give the same cosines in float64
    with lora_adapter(model, LoraSpec(), seed=0) as peft_model:
        grads = per_example_gradients(peft_model, [encode_example(tok, ex) for ex in examples], [ex.id for ex in examples], progress=False)
    assert grads.losses == report.losses and grads.grad_norms == report.grad_norms and grads.ids == report.ids
    from dataeff.similarity import pairwise_cosine
    assert pairwise_cosine(grads.chunks).numpy().tolist() == report.cosine_matrix
    assert np.abs(np.array(report.cosine_matrix) - float64_cosines(grads.chunks)).max() <= cosine_tol(grads)
    assert report.interval[0] <= report.coslow <= report.interval[1]
    assert grads.dim == 30 * 64 * (576 + 192 + 192 + 576 + 1536 + 1536 + 576)  # lora_B of q/k/v/o/gate/up/down, 30 layers


def test_an_impossible_memory_plan_is_refused_in_one_line_before_any_gradient(tiny, tiny_folder, tmp_path, capsys, monkeypatch):
    "The plan against what the device has, before the adapter is built: a LoRA rank of 10^8 on the tiny model makes D = 51.2 billion."
    import dataeff.coslow as coslow
    from dataeff.gradients import lora_gradient_dim
    model, tok = tiny
    sample, pool = make_task("web_of_lies", 6, seed=0), make_task("web_of_lies", 30, seed=1)
    assert lora_gradient_dim(model, LoraSpec(r=10**8)) == 10**8 * 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)  # r·d_out over 7 projections, 2 layers
    def no_adapter(*a, **k): raise AssertionError("the adapter was built: gradients were about to start")
    monkeypatch.setattr(coslow, "lora_adapter", no_adapter)
    with pytest.raises(DataeffError) as e:
        compute_coslow(model, tok, sample, lora_r=10**8, random_examples=pool[:6], progress=False)
    message = str(e.value)
    assert "\n" not in message and "(12 × D = 12 × 51,200,000,000 in float32)" in message and "more than the cpu has" in message
    assert message.endswith("use --grad-dtype bfloat16 (half the buffer), --no-baselines (no second buffer for cos_sim_k), "
                            "a smaller --grad-batch-size (now 2) or a smaller --k")
    # what the device has decides: a small plan with 1 kB free (beside the loaded model); the fixes named are those that apply
    import dataeff.gradients as gradients
    monkeypatch.setattr(gradients, "available_memory", lambda device: 1000)
    with pytest.raises(DataeffError, match=r"^memory on cpu: .* needed, .* available: more than the cpu has; use a smaller --grad-batch-size \(now 2\) or a smaller --k$"):
        compute_coslow(model, tok, sample, **LORA, grad_dtype="bfloat16", baselines=False, progress=False)
    monkeypatch.undo()
    write_examples(tmp_path / "labelled.jsonl", sample)
    capsys.readouterr()
    assert main(["coslow", str(tmp_path / "labelled.jsonl"), "--model", str(tiny_folder), "--lora-r", "100000000", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()  # the model's loading bar, then the error
    assert err[-1].startswith("dataeff coslow: error: memory on cpu:") and "more than the cpu has; use --grad-dtype bfloat16" in err[-1]
    assert sum("error" in line for line in err) == 1 and not (tmp_path / "r.json").exists()


def test_the_report_keeps_the_memory_plan(tiny):
    model, tok = tiny
    report = compute_coslow(model, tok, make_task("web_of_lies", 6, seed=0), **LORA, random_examples=make_task("web_of_lies", 6, seed=1), progress=False)
    plan = report.memory
    assert plan.gradient_dim == report.gradient_dim and plan.rows == 12 and plan.grad_dtype == "float32" and plan.available_bytes is None
    assert plan.buffer_bytes == 12 * report.gradient_dim * 4 and plan.needed == plan.model_bytes + plan.adapter_bytes + plan.buffer_bytes + plan.activation_bytes
    assert CoslowReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
