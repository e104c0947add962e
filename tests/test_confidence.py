import json, math, os, random, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from dataeff.cli import main
from dataeff.confidence import (MIN_POOL_PER_K, SampleSettings, random_labelled_sample, read_scores, score_examples, score_pool,
                                select_low_confidence, select_sample)
from dataeff.core import DataeffError
from dataeff.data import Example, read_annotations, read_pool, write_examples
from dataeff.models import fp32_rounding_bound, render_prompt
from dataeff.tasks import make_task


@pytest.fixture(scope="module")
def pool():
    return make_task("boolean_expressions", 20, seed=1) + make_task("word_sorting", 12, seed=1)


def conf_tol(model):
    "Bound on |Δ avg_confidence| between fp32 runs that differ in batching: p = exp(log p), so |Δp| <= p·|log p|·δ <= δ/e for log p off by a relative δ."
    return fp32_rounding_bound(model.config) / math.e


def ppl_tol(model, ppl):
    "Bound on |Δppl|: ppl = exp(mean NLL), the NLL off by a relative δ moves ppl by a relative log(ppl)·δ."
    return fp32_rounding_bound(model.config) * math.log(ppl) * ppl


def two_pass_float64(model, tok, example, max_new_tokens):
    "Reference: greedy generation one token at a time from full float64 forward passes, then confidence of the answer."
    ids = tok(render_prompt(tok, example), add_special_tokens=False)["input_ids"]
    start, probs = len(ids), []
    with torch.no_grad():
        model.double()
        for _ in range(max_new_tokens):
            p = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
            probs.append(p.max().item())
            ids.append(int(p.argmax()))
            if ids[-1] == tok.eos_token_id: break
        model.float()
    answer_probs = probs[:-1] if ids[-1] == tok.eos_token_id and len(probs) > 1 else probs
    return sum(answer_probs) / len(answer_probs), tok.decode(ids[start:start + len(answer_probs)], skip_special_tokens=True).strip()


def test_batch_size_does_not_change_scores(tiny, pool):
    model, tok = tiny
    one = score_examples(model, tok, pool, batch_size=1, max_new_tokens=10, progress=False)
    sixteen = score_examples(model, tok, pool, batch_size=16, max_new_tokens=10, progress=False)
    assert [s["id"] for s in one] == [ex.id for ex in pool]
    assert [s["answer"] for s in one] == [s["answer"] for s in sixteen]
    for a, b in zip(one, sixteen):
        assert abs(a["avg_confidence"] - b["avg_confidence"]) <= conf_tol(model) and abs(a["ppl"] - b["ppl"]) <= ppl_tol(model, a["ppl"])


def test_scores_match_a_float64_two_pass_reference(tiny, pool):
    model, tok = tiny
    scores = score_examples(model, tok, pool[:8], batch_size=4, max_new_tokens=10, progress=False)
    for ex, s in zip(pool[:8], scores):
        conf, answer = two_pass_float64(model, tok, ex, 10)
        assert abs(s["avg_confidence"] - conf) <= conf_tol(model) and s["answer"] == answer  # fp32 vs float64: within the same bound
        assert 0 < s["avg_confidence"] <= 1 and s["ppl"] >= 1


def test_over_long_prompt_is_an_error_before_any_work(tiny, tmp_path):
    model, tok = tiny
    long = Example("long", "True and " * 400 + "False")
    with pytest.raises(DataeffError, match="'long'.*exceeds.*context of 512"):
        score_pool(model, tok, [Example("ok", "True")] + [long], tmp_path/"s.jsonl", max_new_tokens=4, progress=False)
    assert not (tmp_path/"s.jsonl").exists()


def test_score_pool_resumes_and_refuses_foreign_files(tiny, pool, tmp_path, monkeypatch):
    model, tok = tiny
    out = tmp_path/"scores.jsonl"
    first = score_pool(model, tok, pool[:5], out, score_batch_size=2, max_new_tokens=6, progress=False)
    import dataeff.confidence as confidence
    seen, real = [], confidence.score_examples
    monkeypatch.setattr(confidence, "score_examples", lambda m, t, exs, *a, **k: seen.extend(e.id for e in exs) or real(m, t, exs, *a, **k))
    full = score_pool(model, tok, pool, out, score_batch_size=2, max_new_tokens=6, progress=False)
    assert set(seen) == {ex.id for ex in pool[5:]} and full[:5] == first
    assert [s["id"] for s in read_scores(out)] == [ex.id for ex in pool] and all(s["model"] == "tiny-llama-seed0" for s in full)
    with pytest.raises(DataeffError, match="not in the pool"): score_pool(model, tok, pool[:3], out, progress=False)
    out.write_text(out.read_text().replace("tiny-llama-seed0", "other"))
    with pytest.raises(DataeffError, match="scored with model 'other'"): score_pool(model, tok, pool, out, progress=False)


def test_selection_takes_a_seeded_sample_of_the_lowest_decile():
    scores = [dict(id=f"x{i:03d}", avg_confidence=1 - i / 200, ppl=1 + i / 10) for i in range(200)]
    picked = select_low_confidence(scores, k=5, seed=0)
    assert len(set(picked)) == 5 and all(int(i[1:]) >= 180 for i in picked)
    assert picked == select_low_confidence(scores, k=5, seed=0) != select_low_confidence(scores, k=5, seed=1)
    assert set(select_low_confidence(scores, k=20, by="ppl")) == {f"x{i:03d}" for i in range(180, 200)}
    tied = [dict(id=f"t{i:02d}", avg_confidence=0.5, ppl=2.0) for i in reversed(range(40))]
    assert select_low_confidence(tied, k=4, seed=3) == sorted(select_low_confidence(tied, k=4, seed=3))
    assert set(select_low_confidence(tied, k=4, seed=3)) <= {"t00", "t01", "t02", "t03"}  # ties broken by id
    with pytest.raises(DataeffError, match="at least 210 examples"): select_low_confidence(scores, k=21)
    with pytest.raises(DataeffError, match="rank by"): select_low_confidence(scores, by="loss")


def test_cli_select_and_annotation_round_trip(tmp_path, capsys):
    pool = [Example(f"e{i}", f"question {i}", None if i % 2 else str(i)) for i in range(50)]
    write_examples(tmp_path/"pool.jsonl", pool)
    scores = [dict(id=ex.id, avg_confidence=i / 50, ppl=1.0, answer="", model="m") for i, ex in enumerate(pool)]
    (tmp_path/"s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    out = tmp_path/"to_annotate.jsonl"
    assert main(["select", str(tmp_path/"s.jsonl"), "--pool", str(tmp_path/"pool.jsonl"), "--k", "5", "--out", str(out)]) == 0
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["id"] for l in lines] == ["e0", "e1", "e2", "e3", "e4"] and [l["target"] for l in lines] == ["0", "", "2", "", "4"]
    printed = capsys.readouterr().out
    assert f"next: label the target of each line of {out}, or the label column of {tmp_path/'to_annotate.csv'}" in printed
    assert (tmp_path/"to_annotate.csv").read_text().splitlines()[0] == "id,input,label"
    with pytest.raises(DataeffError, match="empty target"): read_annotations(out, read_pool(tmp_path/"pool.jsonl"))
    assert main(["select", str(tmp_path/"s.jsonl"), "--pool", str(tmp_path/"pool.jsonl"), "--k", "6", "--out", str(tmp_path/"x.jsonl")]) == 2
    assert "at least 60" in capsys.readouterr().err and not (tmp_path/"x.jsonl").exists()
    assert main(["select", str(tmp_path/"s.jsonl"), "--pool", str(tmp_path/"pool.jsonl"), "--k", "1", "--out", str(tmp_path/"x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--k 1: CoS-Low compares pairs" in err and err.count("\n") == 1 and not (tmp_path/"x.jsonl").exists()


@pytest.mark.parametrize("text, message", [("", "no examples"), ('{"input": "a"}\nnope\n', "line 2: not valid JSON"),
                                           ('{"id": "a", "input": "x"}\n{"id": "a", "input": "y"}\n', "repeats line 1")])
def test_cli_score_rejects_bad_pools_before_loading_a_model(tmp_path, capsys, text, message):
    (tmp_path/"pool.jsonl").write_text(text)
    assert main(["score", str(tmp_path/"pool.jsonl"), "--model", str(tmp_path/"no-model")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path/"pool.scores.jsonl").exists()


def test_select_sample_refuses_scores_of_another_pool():
    pool = [Example(f"e{i:02d}", f"question {i}", str(i) if i % 3 else None) for i in range(40)]
    scores = [dict(id=ex.id, avg_confidence=i / 40, ppl=1.0) for i, ex in enumerate(pool)]
    picked = select_sample(pool, scores, k=4, seed=0)
    assert [ex.id for ex in picked.examples] == select_low_confidence(scores, k=4, seed=0) == [s["id"] for s in picked.scores]
    assert picked.n_scored == 40 and [ex.id for ex in picked.unlabelled] == [ex.id for ex in picked.examples if ex.target is None]
    assert picked.random == random_labelled_sample(pool, 4, 0) and all(ex.target is not None for ex in picked.random)
    labelled = Example(picked.unlabelled[0].id, picked.unlabelled[0].input, "yes")
    assert labelled in select_sample(pool, scores, SampleSettings(k=4), annotations=[labelled]).examples  # annotations come first
    with pytest.raises(DataeffError, match="the scores hold id 'x', which is not in the pool"):
        select_sample(pool, scores + [dict(id="x", avg_confidence=0.0, ppl=1.0)], k=4)
    with pytest.raises(DataeffError, match="1 examples of the pool are not scored yet"): select_sample(pool, scores[1:], k=4)
    with pytest.raises(DataeffError, match=f"at least {MIN_POOL_PER_K * 5} examples"): select_sample(pool, scores, k=5)
    with pytest.raises(DataeffError, match="--k 1: CoS-Low compares pairs"): select_sample(pool, scores, k=1)


def test_cli_score_takes_device_auto_and_refuses_an_unknown_device(tiny, tmp_path, capsys):
    model, tok = tiny
    model.save_pretrained(tmp_path/"tiny"); tok.save_pretrained(tmp_path/"tiny")
    write_examples(tmp_path/"pool.jsonl", make_task("boolean_expressions", 3, seed=0))
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["score", str(tmp_path/"pool.jsonl"), "--model", str(tmp_path/"tiny"), "--device", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--device 'nope': not a torch device" in err and err.count("\n") == 1 and not (tmp_path/"pool.scores.jsonl").exists()
    assert main(["score", str(tmp_path/"pool.jsonl"), "--model", str(tmp_path/"tiny"), "--device", "auto", "--max-new-tokens", "4"]) == 0
    assert [s["id"] for s in read_scores(tmp_path/"pool.scores.jsonl")] == [ex.id for ex in make_task("boolean_expressions", 3, seed=0)]


def test_cli_score_unreachable_model(tmp_path, capsys):
    write_examples(tmp_path/"pool.jsonl", [Example("a", "x")])
    assert main(["score", str(tmp_path/"pool.jsonl"), "--model", str(tmp_path/"no-model")]) == 2
    assert "cannot load" in capsys.readouterr().err and not (tmp_path/"pool.scores.jsonl").exists()


def test_default_model_end_to_end(tmp_path, capsys):
    "Integration: SmolLM2-135M-Instruct scores a 40-example unlabelled pool through the CLI, then 4 least-confident examples are selected."
    assert main(["tasks", "make", "boolean_expressions", "--n", "40", "--seed", "0", "--out", str(tmp_path/"pool.jsonl"), "--unlabelled"]) == 0
    assert main(["score", str(tmp_path/"pool.jsonl"), "--score-batch-size", "20", "--max-new-tokens", "8"]) == 0
    scores = read_scores(tmp_path/"pool.scores.jsonl")
    assert len(scores) == 40 and all(s["model"] == "smollm2-135m" and 0 < s["avg_confidence"] <= 1 for s in scores)
    assert sum(s["answer"].lower().startswith(("true", "false")) for s in scores) >= 30  # a real instruct model answers the task
    assert main(["select", str(tmp_path/"pool.scores.jsonl"), "--pool", str(tmp_path/"pool.jsonl"), "--k", "4", "--out", str(tmp_path/"a.jsonl")]) == 0
    chosen = [json.loads(l)["id"] for l in (tmp_path/"a.jsonl").read_text().splitlines()]
    lowest = sorted(scores, key=lambda s: (s["avg_confidence"], s["id"]))[:4]
    assert chosen == [s["id"] for s in lowest]


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    "The tiny model saved to a folder, loadable by name like any local model (and by other processes)."
    folder = tmp_path_factory.mktemp("model")/"tiny"
    model, tok = tiny
    model.save_pretrained(folder); tok.save_pretrained(folder)
    return folder


def test_max_pool_scores_a_seeded_sample_and_select_takes_it(tiny, tiny_folder, tmp_path, capsys, monkeypatch):
    "Scoring costs max_pool examples whatever the pool's size; select draws the same sample from the same --max-pool and --seed."
    import dataeff.confidence as confidence
    from dataeff.confidence import pool_sample
    examples = make_task("boolean_expressions", 400, seed=2)
    write_examples(tmp_path/"pool.jsonl", examples)
    seen, real = [], confidence.score_examples
    monkeypatch.setattr(confidence, "score_examples", lambda m, t, exs, *a, **k: seen.extend(e.id for e in exs) or real(m, t, exs, *a, **k))
    capsys.readouterr()
    assert main(["score", str(tmp_path/"pool.jsonl"), "--model", str(tiny_folder), "--max-pool", "40", "--k", "4", "--max-new-tokens", "4",
                 "--score-batch-size", "8", "--out", str(tmp_path/"s.jsonl")]) == 0
    said = capsys.readouterr()
    assert "scored 40 of 400 pool examples (a seeded sample)" in said.out
    assert "scoring 40 of 400 examples: about" in said.err  # the expected duration, from the first batch
    sample = [ex.id for ex in pool_sample(examples, 40, seed=0)]
    assert sorted(seen) == sorted(sample) and [s["id"] for s in read_scores(tmp_path/"s.jsonl")] == sample  # the sample alone, in pool order
    assert main(["select", str(tmp_path/"s.jsonl"), "--pool", str(tmp_path/"pool.jsonl"), "--k", "4", "--max-pool", "40", "--out", str(tmp_path/"a.jsonl")]) == 0
    assert "least-confident of 40 of 400 pool examples (a seeded sample)" in capsys.readouterr().out
    chosen = [json.loads(l)["id"] for l in (tmp_path/"a.jsonl").read_text().splitlines()]
    assert set(chosen) <= set(sample) and chosen == select_low_confidence(read_scores(tmp_path/"s.jsonl"), k=4, seed=0)
    assert main(["select", str(tmp_path/"s.jsonl"), "--pool", str(tmp_path/"pool.jsonl"), "--k", "4", "--max-pool", "80", "--out", str(tmp_path/"b.jsonl")]) == 2
    assert "not scored yet (of the 80 that --max-pool 80 --seed 0 samples)" in capsys.readouterr().err and not (tmp_path/"b.jsonl").exists()


@pytest.mark.parametrize("command", ["score", "estimate"])
@pytest.mark.parametrize("value, message", [("-1", "--max-pool -1: give the number of pool examples to score, or 0 for the whole pool"),
                                            ("abc", "argument --max-pool: invalid int value: 'abc'"),
                                            ("319", "--max-pool 319: the sample's least-confident tenth must hold k = 32: score at least 320 examples")])
def test_bad_max_pool_is_one_line_and_exit_2(tmp_path, capsys, command, value, message):
    write_examples(tmp_path/"pool.jsonl", make_task("boolean_expressions", 400, seed=0))
    assert main([command, str(tmp_path/"pool.jsonl"), "--model", str(tmp_path/"no-model"), "--max-pool", value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path/"pool.scores.jsonl").exists() and not (tmp_path/"dataeff-estimate").exists()


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dataeff.cli"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}


def _same_scores(model, ours, reference):
    "The same ids in the same order, the same answers, confidences within the batch-invariance bound of fp32 rounding."
    assert [s["id"] for s in ours] == [s["id"] for s in reference]
    assert [s["answer"] for s in ours] == [s["answer"] for s in reference]
    for a, b in zip(ours, reference):
        assert abs(a["avg_confidence"] - b["avg_confidence"]) <= conf_tol(model) and abs(a["ppl"] - b["ppl"]) <= ppl_tol(model, b["ppl"])


def _one_process(args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: assert main(args) == 0
    finally: torch.set_num_threads(threads)


def test_two_processes_score_the_same_file_as_one(tiny, tiny_folder, tmp_path):
    "torchrun over two CPU processes (gloo): each scores its share, the main process gathers one file in pool order, each id once."
    write_examples(tmp_path/"pool.jsonl", make_task("boolean_expressions", 30, seed=1) + make_task("word_sorting", 30, seed=1))
    args = ["score", str(tmp_path/"pool.jsonl"), "--model", str(tiny_folder), "--max-new-tokens", "8", "--score-batch-size", "4"]
    _one_process([*args, "--out", str(tmp_path/"one.jsonl")])
    two = subprocess.run([*TORCHRUN, *args, "--out", str(tmp_path/"two.jsonl")], env=ONE_THREAD, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "gathered the scores of 2 processes (30 + 30 new)" in two.stderr  # both processes scored their half
    assert two.stdout.count("scored 60 pool examples") == 1  # the main process alone reports
    _same_scores(tiny[0], read_scores(tmp_path/"two.jsonl"), read_scores(tmp_path/"one.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "pool.jsonl", "two.jsonl"]  # no shard files left


def _workers(pid):
    "Process ids below `pid`, with the RANK each was started with (None if it has none)."
    found, todo = {}, [pid]
    while todo:
        for child in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            for c in map(int, child.read_text().split()):
                try: env = dict(kv.split("=", 1) for kv in Path(f"/proc/{c}/environ").read_text().split("\0") if "=" in kv)
                except OSError: continue
                found[c] = env.get("RANK")
                todo.append(c)
    return found


def test_a_process_killed_mid_scoring_resumes_to_the_same_file(tiny, tiny_folder, tmp_path):
    "kill -9 of one of two scoring processes: the launcher stops the other, the shard files keep what was scored, and a rerun finishes the same file."
    write_examples(tmp_path/"pool.jsonl", make_task("boolean_expressions", 500, seed=4) + make_task("word_sorting", 500, seed=4))
    args = ["score", str(tmp_path/"pool.jsonl"), "--model", str(tiny_folder), "--max-new-tokens", "8", "--score-batch-size", "2", "--max-pool", "0"]
    out = tmp_path/"two.jsonl"
    _one_process([*args, "--out", str(tmp_path/"one.jsonl")])
    run = subprocess.Popen([*TORCHRUN, *args, "--out", str(out)], env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = tmp_path/"two.jsonl.part1"
    deadline = time.monotonic() + 300
    while not shard.exists() and run.poll() is None and time.monotonic() < deadline: time.sleep(0.05)
    time.sleep(random.Random(3).uniform(0, 1))
    rank1 = [pid for pid, rank in _workers(run.pid).items() if rank == "1"]
    assert run.poll() is None and rank1, "the run ended before it could be killed"
    os.kill(rank1[0], signal.SIGKILL)
    assert run.wait(timeout=300) != 0
    assert not out.exists()  # only the main process writes the scores file, once every shard is in
    partial = sum(len(read_scores(p)) for p in tmp_path.glob("two.jsonl.part*"))
    assert 0 < partial < 1000, partial
    rerun = subprocess.run([*TORCHRUN, *args, "--out", str(out)], env=ONE_THREAD, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    new = re.search(r"gathered the scores of 2 processes \((\d+) \+ (\d+) new\)", rerun.stderr)
    assert new and int(new[1]) + int(new[2]) == 1000 - partial  # the rerun scored only what the shards did not hold
    _same_scores(tiny[0], read_scores(out), read_scores(tmp_path/"one.jsonl"))
    assert not list(tmp_path.glob("two.jsonl.part*"))
