"scripts/gpu-calibrate: the CPU dry run end to end with the tiny model, resume, the deadline guard, the fit, the payload round trip."
import hashlib, importlib.machinery, importlib.util, json, tarfile
from pathlib import Path
import pytest

SCRIPT = Path(__file__).resolve().parent.parent/"scripts"/"gpu-calibrate"

@pytest.fixture(scope="module")
def gc():
    loader = importlib.machinery.SourceFileLoader("gpu_calibrate", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_calibrate", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module

TASKS = "boolean_expressions,web_of_lies"

def _run(gc, out, stage, *extra):
    return gc.main(["--dry-run", "--model", "tiny", "--workers", "0", "--tasks", TASKS, "--max-steps", "1", "--steps", "stash,model,coslow,curves,calibrate",
                    "--out", str(out), "--export", str(out.parent/"export"), "--stage-dir", str(stage), *extra])

@pytest.fixture(scope="module")
def dry_run(gc, tmp_path_factory):
    base = tmp_path_factory.mktemp("gc")
    assert _run(gc, base/"out", base/"stage") == 0
    return base

def test_dry_run_writes_every_result(dry_run):
    out = dry_run/"out"
    plan = json.loads((out/"plan.json").read_text())
    assert plan["dry_run"] and plan["budgets"] == [0, 50] and plan["max_steps"] == 1
    for task in TASKS.split(","):
        curve = json.loads((out/"curves"/f"tiny-llama-seed0_{task}_full_result_v2.json").read_text())
        assert sorted(curve, key=int) == ["0", "50"] and curve["50"]["steps"] == 1
        for seed in (0, 1):
            report = json.loads((out/"coslow-seeds"/f"{task}_seed{seed}.json").read_text())
            assert report["k"] == 4 and report["seed"] == seed and report["task"] == task and -1 <= report["coslow"] <= 1
        mean = json.loads((out/"coslow"/f"{task}.json").read_text())
        assert mean["coslow"] == pytest.approx(sum(mean["per_seed"].values()) / 2) and mean["complete"]
        status = json.loads((out/"status"/f"{task}.json").read_text())
        assert status["budgets_done"] == [0, 50] and status["coslow_seeds_done"] == ["0", "1"] and not status["errors"] and not status["skipped"]
    cal = json.loads((out/"calibration.json").read_text())
    # the random tiny model never answers right, so no curve can be normalised: the fit is refused and says why
    assert cal["dry_run"] and "DRY-RUN" in cal["family"] and cal["status"] == "not fitted" and set(cal["left_out"]) == set(TASKS.split(","))
    assert "## Calibration" in (out/"summary.md").read_text() and (out/"done.json").is_file()
    export = dry_run/"export"
    assert sorted(p.name for p in export.iterdir()) == ["calibration.json", "results.tar.gz", "summary.md"]
    with tarfile.open(export/"results.tar.gz") as tar: names = set(tar.getnames())
    assert {"plan.json", "calibration.json", "coslow/web_of_lies.json", "curves/tiny-llama-seed0_web_of_lies_full_result_v2.json"} <= names

def test_rerun_resumes_without_recomputing(gc, dry_run):
    out = dry_run/"out"
    kept = {p: p.stat().st_mtime_ns for p in list((out/"coslow-seeds").iterdir()) + list((out/"curves").iterdir())}
    assert _run(gc, out, dry_run/"stage") == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept

def test_deadline_skips_work_and_still_reports(gc, tmp_path):
    assert _run(gc, tmp_path/"out", tmp_path/"stage", "--deadline-s", "1") == 0
    status = json.loads((tmp_path/"out"/"status"/"web_of_lies.json").read_text())
    assert status["skipped"] == ["coslow (deadline)", "budget 0 (deadline)", "budget 50 (deadline)"] and not status["budgets_done"]
    assert "coslow (deadline)" in (tmp_path/"out"/"summary.md").read_text()

def test_fit_from_results(gc, tmp_path):
    "Synthetic curves and CoS-Low reports on a known line give that line back, with the leave-one-out MAE and r."
    out = tmp_path/"out"
    tasks = ["t1", "t2", "t3", "t4"]
    plan = dict(gc.GPU_PLAN, tasks=tasks, model=gc.FAMILY, dry_run=False)
    aucs = {}
    for i, task in enumerate(tasks):
        scores = {0: 0.1, 50: 0.2 + 0.1 * i, 100: 0.3 + 0.1 * i, 200: 0.5 + 0.1 * i, 500: 0.9, 1000: 0.9, 2500: 0.9, 5000: 0.9}
        gc.write_json(gc.curve_file(out, task, gc.FAMILY), {str(b): {"accuracy": s, "fingerprint": "x"} for b, s in scores.items()})
        from dataeff.curves import data_efficiency_auc
        aucs[task] = data_efficiency_auc(scores)
    for task in tasks:  # CoS-Low exactly on AUC = 0.5·CoS-Low + 0.2
        gc.write_json(out/"coslow"/f"{task}.json", {"coslow": (aucs[task] - 0.2) / 0.5, "per_seed": {"0": 0.0}})
    cal = gc.fit(out, plan)
    assert cal["status"] == "fitted" and cal["n_tasks"] == 4 and cal["complete"]
    assert cal["c"] == pytest.approx(0.5) and cal["intercept"] == pytest.approx(0.2) and cal["r"] == pytest.approx(1.0) and cal["loo_mae"] == pytest.approx(0, abs=1e-9)  # float64 fit of exact-line data: residuals ~1e-16; rel 1e-6 / abs 1e-9 are far above
    assert json.loads((out/"calibration.json").read_text())["family"] == "smollm2-135m" and (out/"calibration.png").is_file()
    # step 3 on the CPU: `dataeff calibrate` on the table the run wrote reproduces the fit
    from dataeff.cli import main
    assert main(["calibrate", str(out/"calibration-table.csv"), "--family", "smollm2-135m", "--out", str(tmp_path/"cal.json"), "--n-boot", "0"]) == 0
    again = json.loads((tmp_path/"cal.json").read_text())
    assert [again[k] for k in ("c", "intercept", "r", "loo_mae", "n_tasks")] == pytest.approx([cal[k] for k in ("c", "intercept", "r", "loo_mae", "n_tasks")])

def test_payload_round_trip_and_damage(gc, tmp_path, monkeypatch):
    "Parts carried by two calls are stashed, reassembled and checked; a missing or damaged part stops the run with exit code 3."
    data = bytes(range(256)) * 1000
    payload = tmp_path/"payload-src"
    for sub, part in (("a", data[:100_000]), ("b", data[100_000:])):
        (payload/sub).mkdir(parents=True)
        (payload/sub/f"model.gguf.part{'ab'.index(sub)}").write_bytes(part)
    manifest = {"gguf_name": "m.gguf", "gguf_package": "pkg-1", "gguf_bytes": len(data), "gguf_sha256": hashlib.sha256(data).hexdigest(),
                "parts": [{"name": "model.gguf.part0"}, {"name": "model.gguf.part1"}], "wheels": []}
    for sub in "ab": gc.write_json(payload/sub/"manifest.json", manifest)
    monkeypatch.setattr(gc, "PAYLOAD", payload)
    stage = tmp_path/"stage"
    b = payload/"b"
    b.rename(tmp_path/"b-later")  # call A carries only part a
    assert gc.stash(stage) == manifest
    with pytest.raises(SystemExit) as e: gc.unpack(stage, manifest)
    assert e.value.code == 3
    (tmp_path/"b-later").rename(b)  # call B carries part b; part a is still in the stage folder
    (payload/"a"/"model.gguf.part0").unlink()
    gc.stash(stage)
    record = gc.unpack(stage, manifest)
    assert Path(record["gguf"]).read_bytes() == data and Path(record["gguf"]) == stage/"cache"/"gguf"/"pkg-1"/"m.gguf"
    Path(record["gguf"]).unlink()
    (stage/"payload"/"model.gguf.part1").write_bytes(b"x" * (len(data) - 100_000))
    with pytest.raises(SystemExit) as e: gc.unpack(stage, manifest)
    assert e.value.code == 3 and not Path(record["gguf"]).exists()
