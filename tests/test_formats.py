"""Fine-tuning data as people keep it: chat messages, ShareGPT and Alpaca read natively, datasets `load_dataset` reads, the answer a
model states read through the answer set, generation metrics for curves, the line that says what was read, and each bad input named."""
import dataclasses, json, os, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
import datasets
from dataeff.cli import main
from dataeff.core import DataeffError
from dataeff.data import Example, PoolSettings, read_pool, read_annotations, write_examples, write_to_annotate, annotation_text
from dataeff.tasks import make_task
from cli_checks import fails_cleanly

datasets.disable_progress_bars()
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def chat_record(ex, answer=True):
    "An `Example` as a chat-messages record: the instruction as system turn, the input as user turn, the target as assistant turn."
    turns = ex.turns + ([{"role": "assistant", "content": ex.target}] if answer and ex.target is not None else [])
    return {"id": ex.id, "messages": turns}


def write_format(kind, examples, folder):
    "Write `examples` as pool format `kind` under `folder`; returns (path, the options that read it)."
    if kind == "chat":
        path = folder/"pool.jsonl"
        path.write_text("".join(json.dumps(chat_record(ex)) + "\n" for ex in examples))
        return path, []
    if kind == "sharegpt":
        path = folder/"pool.json"  # a JSON list, as ShareGPT files usually are
        path.write_text(json.dumps([{"id": ex.id, "conversations": [{"from": SHAREGPT_ROLES[t["role"]], "value": t["content"]} for t in chat_record(ex)["messages"]]}
                                    for ex in examples]))
        return path, []
    if kind == "alpaca":
        path = folder/"alpaca.jsonl"
        path.write_text("".join(json.dumps({"id": ex.id, "instruction": ex.instruction, "input": ex.input, "output": ex.target}) + "\n" for ex in examples))
        return path, []
    if kind == "csv":
        path = folder/"pool.csv"
        pd.DataFrame({"id": [ex.id for ex in examples], "question": [ex.input for ex in examples], "task": [ex.instruction for ex in examples],
                      "answer": [ex.target for ex in examples]}).to_csv(path, index=False)
        return path, ["--input-field", "question", "--instruction-field", "task", "--target-field", "answer"]
    raise ValueError(kind)


def options_dict(flags):
    return {flags[i].removeprefix("--").replace("-", "_"): flags[i + 1] for i in range(0, len(flags), 2)}


KINDS = ["chat", "sharegpt", "alpaca", "csv"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_to_the_same_examples(tmp_path, kind):
    examples = make_task("object_counting", 6, seed=0)
    path, flags = write_format(kind, examples, tmp_path)
    pool = read_pool(path, **options_dict(flags))
    assert pool == examples and pool.format == {"csv": "fields"}.get(kind, kind)
    assert f"as {dict(chat='chat messages', sharegpt='ShareGPT', alpaca='Alpaca', csv='fields')[kind]}:" in pool.description
    assert pool.description.startswith(f"read 6 examples (6 labelled) from {path}")


def test_the_line_that_says_what_was_read():
    pool = read_pool([{"question": "2 + 2?"}, {"question": "3 + 3?"}], input_field="question")
    assert pool.description == ("read 2 examples (0 labelled) from the list of dicts (list of dicts) as fields: "
                                "input ← question, target ← none, id ← row number, instruction ← none, labels ← none")


def test_a_conversation_keeps_its_turns_and_an_unlabelled_one_ends_with_the_user(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "And 3 + 3?"}]
    (tmp_path/"c.jsonl").write_text(json.dumps({"messages": turns + [{"role": "assistant", "content": "6"}]}) + "\n")
    [ex] = read_pool(tmp_path/"c.jsonl")
    assert (ex.input, ex.instruction, ex.target, ex.messages) == ("And 3 + 3?", "Be brief.", "6", turns)
    (tmp_path/"u.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    [unlabelled] = read_pool(tmp_path/"u.jsonl")
    assert unlabelled.target is None and unlabelled.messages == turns
    for written in (ex, unlabelled):  # written back as chat messages (the answer as last turn), read back the same
        write_examples(tmp_path/"again.jsonl", [written])
        assert read_pool(tmp_path/"again.jsonl") == [written]
    assert json.loads((tmp_path/"again.jsonl").read_text())["messages"] == turns


def test_alpaca_with_an_empty_input_is_the_instruction_alone(tmp_path):
    rows = [{"instruction": "Name a colour.", "input": "", "output": "red"}, {"instruction": "Add.", "input": "2 + 2", "output": ""}]
    (tmp_path/"a.json").write_text(json.dumps(rows))
    assert read_pool(tmp_path/"a.json") == [Example("0", "Name a colour.", "red"), Example("1", "2 + 2", None, "Add.")]


def test_format_can_be_forced_and_field_options_do_not_apply_to_conversations(tmp_path):
    (tmp_path/"c.jsonl").write_text(json.dumps({"dialog": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    assert read_pool(tmp_path/"c.jsonl", format="chat", input_field="dialog") == [Example("0", "hi", "yo")]
    assert read_pool(tmp_path/"c.jsonl", input_field="dialog").format == "chat"  # a named field that holds turns is a conversation
    with pytest.raises(DataeffError, match="--target-field applies to a pool of fields"): read_pool(tmp_path/"c.jsonl", input_field="dialog", target_field="x")
    with pytest.raises(DataeffError, match="no field 'messages' to read as chat messages"): read_pool(tmp_path/"c.jsonl", format="chat")


# ---- the default model: the same pool in every format gives the same scores and the same CoS-Low

E2E = ["--k", "4", "--no-baselines", "--quiet", "--resamples", "100", "--max-new-tokens", "8", "--target", "0.9", "--borrow-calibration"]  # short answers: quick


@pytest.fixture(scope="module")
def measured():
    "What each format's run measured, by format: (scores, CoS-Low report)."
    return {}


@pytest.mark.parametrize("kind", KINDS)
def test_same_confidence_scores_and_coslow_in_every_format(tmp_path, capsys, measured, kind):
    examples = make_task("object_counting", 40, seed=0)
    path, flags = write_format(kind, examples, tmp_path)
    assert main(["estimate", str(path), *flags, "--out", str(tmp_path/"out"), *E2E]) == 0
    scores = [json.loads(line) for line in (tmp_path/"out/scores.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path/"out/report.json").read_text())
    assert report["status"] == "complete" and report["n_pool"] == 40 and len(scores) == 40
    measured[kind] = (scores, {k: v for k, v in report["coslow"].items() if k != "timings"})
    first = measured[next(iter(measured))]
    assert measured[kind] == first  # scores and CoS-Low equal to the first format's, to the last bit


def test_a_two_turn_prompt_is_the_models_chat_template_token_for_token(tmp_path):
    from dataeff.models import load_model, encode_example, render_prompt
    _, tok = load_model()
    turns = [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 2 + 2?"},
             {"role": "assistant", "content": "4"}, {"role": "user", "content": "And twice that?"}]
    (tmp_path/"two.jsonl").write_text(json.dumps({"messages": turns + [{"role": "assistant", "content": "8"}]}) + "\n")
    [ex] = read_pool(tmp_path/"two.jsonl")
    enc = encode_example(tok, ex)
    expected = list(tok.apply_chat_template(turns, add_generation_prompt=True)["input_ids"])
    assert enc["input_ids"][:enc["answer_start"]] == expected
    assert render_prompt(tok, ex) == tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert enc["input_ids"][enc["answer_start"]:enc["answer_end"]] == tok("8", add_special_tokens=False)["input_ids"]  # the answer apart
    assert enc["input_ids"][enc["answer_end"]:] == [tok.eos_token_id]


def test_estimate_on_a_chat_pool_round_trips_its_annotations(tmp_path, capsys):
    "Two-turn conversations, unlabelled: estimate writes them to annotate in chat format, and takes them back filled in, or the user's own chat file."
    tasks = make_task("object_counting", 40, seed=1)
    answers = {ex.id: ex.target for ex in tasks}
    conversations = [{"id": ex.id, "messages": [{"role": "system", "content": ex.instruction}, {"role": "user", "content": "I will ask you to count."},
                                                {"role": "assistant", "content": "Go ahead."}, {"role": "user", "content": ex.input}]} for ex in tasks]
    pool = tmp_path/"chat.jsonl"
    pool.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    args = ["estimate", str(pool), "--out", str(tmp_path/"out"), "--k", "4", "--no-baselines", "--resamples", "100", "--max-new-tokens", "8", "--borrow-calibration"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "read 40 examples (0 labelled) from" in out and "as chat messages: prompt ← messages" in out and "to_annotate.csv" in out
    written = [json.loads(line) for line in (tmp_path/"out/to_annotate.jsonl").read_text().splitlines()]
    assert len(written) == 4 and all(r["messages"][-1] == {"role": "assistant", "content": ""} for r in written)  # the answer to fill in
    sheet = pd.read_csv(tmp_path/"out/to_annotate.csv", dtype=str, keep_default_na=False)
    assert sheet.input[0].startswith(f"system: {tasks[0].instruction}\n\nuser: I will ask you to count.\n\nassistant: Go ahead.\n\nuser: ")
    for r in written: r["messages"][-1]["content"] = answers[r["id"]]
    (tmp_path/"out/to_annotate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    assert main(args + ["--annotations", str(tmp_path/"out/to_annotate.jsonl")]) == 0
    report = json.loads((tmp_path/"out/report.json").read_text())
    assert report["status"] == "complete" and report["coslow"]["k"] == 4
    # the user's own chat file of the same conversations, answers filled in, no ids and another order: joined by the turns
    own = tmp_path/"labelled_by_me.jsonl"
    own.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in written[::-1]))
    assert main(args + ["--annotations", str(own)]) == 0
    again = json.loads((tmp_path/"out/report.json").read_text())
    assert again["coslow"]["coslow"] == report["coslow"]["coslow"]


# ---- datasets load_dataset reads: a folder of data files here, a Hub name where there is a network

@pytest.fixture
def hf_cache(tmp_path_factory, monkeypatch):
    "datasets' cache in a folder of its own, so that load_dataset writes nothing under the user's home or the test's folder."
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))


def test_a_load_dataset_folder_with_chat_columns(tmp_path, capsys, hf_cache):
    folder = tmp_path/"hub_like"
    folder.mkdir()
    examples = make_task("web_of_lies", 6, seed=0)
    for split, part in (("train", examples[:4]), ("test", examples[4:])):
        (folder/f"{split}.jsonl").write_text("".join(json.dumps(chat_record(ex)) + "\n" for ex in part))
    pool = read_pool(folder, split="train")
    assert pool == examples[:4] and pool.format == "chat" and "datasets.load_dataset, split train" in pool.description
    with pytest.raises(DataeffError, match="holds the splits train, test; choose one with --split"): read_pool(folder)
    fails_cleanly(["estimate", str(folder), "--split", "validation", "--out", str(tmp_path/"out"), "--quiet"], tmp_path, capsys,
                  str(folder), "check the name, --subset and --split")


def test_a_hub_name_goes_to_load_dataset_with_its_subset_and_split(monkeypatch):
    calls = []
    def fake_load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pool = read_pool("someone/chats", subset="en", split="train")
    assert calls == [("someone/chats", "en", "train")] and pool == [Example("0", "hi", "yo")]
    with pytest.raises(DataeffError, match="no such file"): read_pool("missing.jsonl")  # a file's name is not a Hub name


def test_a_hub_name_that_cannot_load_offline_is_one_line(tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path/"cache")}
    run = subprocess.run([sys.executable, "-m", "dataeff.cli", "estimate", "someone/not-cached", "--split", "train", "--out", str(tmp_path/"out"), "--quiet"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "someone/not-cached: not a local file or folder, and datasets.load_dataset could not load it" in run.stderr
    assert not (tmp_path/"out").exists()


# ---- answers as models write them

def multiple_choice(n=40):
    "A seven-option multiple-choice pool whose gold answers are (A) to (G)."
    letters = "ABCDEFG"
    return [Example(f"m{i}", f"Question {i}. Options: " + " ".join(f"({c}) item {c}" for c in letters), f"({letters[i % 7]})",
                    "Answer with the option letter in parentheses.") for i in range(n)]


def test_an_answer_stated_in_a_sentence_counts_in_the_zero_shot_accuracy(tiny):
    "A stub generation in sentences: exact match scores it 0, the answer set (given, or inferred from the targets) reads the right option."
    from dataeff.coslow import compute_coslow
    model, tok = tiny
    sample = multiple_choice(8)
    stub = [dict(id=ex.id, avg_confidence=0.5, ppl=2.0, answer=f"The answer is {ex.target}." if i % 4 else "I am not sure.")
            for i, ex in enumerate(sample)]
    run = dict(lora_r=8, lora_alpha=16, resamples=50, scores=stub, progress=False)
    plain = compute_coslow(model, tok, sample, **run, labels=(), answer_pattern=None)
    assert plain.baselines.zero_shot_accuracy == 0.0  # as written, no generation equals "(C)"
    given = compute_coslow(model, tok, sample, **run, labels=[f"({c})" for c in "ABCDEFG"])
    assert given.baselines.zero_shot_accuracy == 0.75 and given.baselines.zero_shot_answers["no_answer"] == 2
    assert given.baselines.zero_shot_answers["samples"] == [dict(id="m0", generation="I am not sure.", answer=None, target="(A)"),
                                                            dict(id="m1", generation="The answer is (B).", answer="(B)", target="(B)")]
    inferred = compute_coslow(model, tok, sample, **run)  # 8 targets, 7 answers: not one answer per four, so no set is inferred
    assert inferred.baselines.zero_shot_accuracy == 0.0
    pattern = compute_coslow(model, tok, sample, **run, labels=(), answer_pattern=r"answer is (\(\w\))")
    assert pattern.baselines.zero_shot_accuracy == 0.75


def test_estimate_reports_how_answers_were_read(tmp_path, tiny, monkeypatch):
    "The report's baselines say how many generations named no option and show two raw generations beside the answer read."
    import dataeff.confidence as confidence
    from dataeff.pipeline import estimate
    model, tokenizer = tiny
    folder = tmp_path/"tiny"
    model.save_pretrained(folder); tokenizer.save_pretrained(folder)
    def stub(model, tokenizer, examples, batch_size=16, max_new_tokens=30, progress=True):
        return [dict(id=ex.id, avg_confidence=(i % 10) / 10, ppl=1.0, answer=f"The answer is {ex.target}." if i % 3 else "Hmm.")
                for i, ex in enumerate(examples)]
    monkeypatch.setattr(confidence, "score_examples", stub)
    report = estimate(multiple_choice(40), out=tmp_path/"out", model=str(folder), k=4, lora_r=8, lora_alpha=16, resamples=50, progress=False,
                      borrow_calibration=True, labels="(A),(B),(C),(D),(E),(F),(G)")
    read = report.coslow.baselines
    assert read.zero_shot_accuracy > 0 and read.zero_shot_answers["labels"] == [f"({c})" for c in "ABCDEFG"]
    md = (tmp_path/"out/report.md").read_text()
    assert f"{read.zero_shot_answers['no_answer']} of 4 generations named no answer" in md and "| generation | answer read | target |" in md


def test_a_curve_reads_answers_through_the_answer_set():
    from dataeff.finetune import CurveData, evaluate_answers
    test = multiple_choice(4)
    data = CurveData("mc", [], test, labels=tuple(f"({c})" for c in "ABCDEFG"))
    entry = evaluate_answers(["The answer is (A).", "(B)", "no idea", "It is (E), not (D)."], data)
    assert entry == {"accuracy": 0.5, "no_answer": 1}
    assert evaluate_answers(["The answer is (A).", "(B)", "no idea", "(D)"], CurveData("mc", [], test)) == {"accuracy": 0.5}  # no set: as written


# ---- generation metrics

def test_rouge_chrf_and_your_own_metric(tmp_path, monkeypatch):
    from dataeff.finetune import score_answers, CurveSettings
    assert score_answers(["the cat sat"], ["the cat sat on"], "rougeL") == pytest.approx(6 / 7)  # LCS 3 of 3 and 4 words: F = 2·1·0.75/1.75
    assert score_answers(["the cat sat on"], ["the cat sat on"], "chrf") == pytest.approx(1.0)
    assert 0 < score_answers(["the cat sat"], ["the cat sat on"], "chrf") < 1
    (tmp_path/"my_metrics.py").write_text("def first_word(predictions, references):\n"
                                          "    return sum(p.split()[:1] == r.split()[:1] for p, r in zip(predictions, references)) / len(references)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert score_answers(["cat sat", "dog"], ["cat", "cow"], "my_metrics:first_word") == 0.5
    assert CurveSettings(metric="my_metrics:first_word").metric == "my_metrics:first_word"
    with pytest.raises(DataeffError, match="--metric 'my_metrics:nothing': my_metrics has no nothing"): CurveSettings(metric="my_metrics:nothing")
    with pytest.raises(DataeffError, match="--metric 'bleu': choose one of exact_match, macro_f1, rougeL, chrf"): CurveSettings(metric="bleu")


def test_auc_and_calibrate_read_a_curve_measured_with_any_metric(tmp_path):
    from dataeff.curves import read_authors_file, analyse_results
    path = tmp_path/"m_summaries_full_result_v2.json"
    path.write_text(json.dumps({"0": {"accuracy": 0.0, "metric": "rougeL", "score": 0.21}, "50": {"accuracy": 0.0, "metric": "rougeL", "score": 0.35},
                                "5000": {"accuracy": 0.1, "metric": "rougeL", "score": 0.52}}))
    assert read_authors_file(path, "summaries") == {0: 0.21, 50: 0.35, 5000: 0.52}
    assert 0 < analyse_results(path)["summaries"].auc < 1
    path.write_text(json.dumps({"0": {"accuracy": 0.0, "metric": "rougeL", "score": 0.21}, "50": {"accuracy": 0.4, "metric": "chrf", "score": 0.3}}))
    with pytest.raises(DataeffError, match="budget 50 is scored by chrf, but budget 0 by rougeL"): read_authors_file(path, "summaries")


def test_curve_with_rouge_l_on_a_generation_task(tmp_path, capsys):
    "word_sorting answers with a sequence of words: its curve measured by ROUGE-L on the default model, with tiny settings."
    out = tmp_path/"smollm2-135m_word_sorting_full_result_v2.json"
    assert main(["curve", "word_sorting", "--metric", "rougeL", "--budgets", "0,8", "--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "4",
                 "--eval-every", "1", "--lr", "1e-4", "--eval-size", "8", "--eval-batch-size", "8", "--max-new-tokens", "12", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["0", "8"]
    for entry in results.values():
        assert entry["metric"] == "rougeL" and 0 <= entry["score"] <= 1 and 0 <= entry["accuracy"] <= 1 and "no_answer" not in entry
    assert "rougeL" in capsys.readouterr().out.splitlines()[-3]  # the summary table is headed by the metric
    print({b: round(e["score"], 4) for b, e in results.items()})


# ---- bad input: exit 2, one line on stderr naming the file and the record, nothing written

def chat_pool(folder, broken=None, n=20):
    "A labelled chat-messages pool of `n` conversations; `broken` replaces the turns of line 4."
    lines = [chat_record(Example(str(i), f"What is {i} plus 1?", str(i + 1), "Answer with a number.")) for i in range(n)]
    if broken is not None: lines[3]["messages"] = broken
    (folder/"chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder/"chat.jsonl"


def estimate(pool, folder, *extra): return ["estimate", str(pool), "--out", str(folder/"out"), "--k", "2", "--quiet", "--borrow-calibration", *extra]


def test_bad_conversation_without_a_user_turn(tmp_path, capsys):
    pool = chat_pool(tmp_path, [{"role": "system", "content": "Answer."}, {"role": "assistant", "content": "4"}])
    fails_cleanly(estimate(pool, tmp_path), tmp_path, capsys, str(pool), "line 4: no user turn")


def test_bad_roles_out_of_order(tmp_path, capsys):
    pool = chat_pool(tmp_path, [{"role": "user", "content": "2 + 2?"}, {"role": "system", "content": "Answer."}, {"role": "assistant", "content": "4"}])
    fails_cleanly(estimate(pool, tmp_path), tmp_path, capsys, str(pool), "line 4: roles out of order: turn 2 is a system turn")
    pool = chat_pool(tmp_path, [{"role": "user", "content": "2 + 2?"}, {"role": "user", "content": "Quick!"}, {"role": "assistant", "content": "4"}])
    fails_cleanly(estimate(pool, tmp_path), tmp_path, capsys, str(pool), "line 4: roles out of order: turn 2 is the user's, where the assistant's comes")


def test_bad_assistant_turn_not_last_in_a_labelled_pool(tmp_path, capsys):
    pool = chat_pool(tmp_path, [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"}])
    fails_cleanly(estimate(pool, tmp_path), tmp_path, capsys, str(pool), "line 4: the conversation goes on after an assistant turn",
                  "this pool is labelled (line 1 ends with its answer)")


def test_bad_mixed_formats_in_one_file(tmp_path, capsys):
    pool = chat_pool(tmp_path)
    lines = pool.read_text().splitlines()
    lines[5] = json.dumps({"id": "5", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
    pool.write_text("\n".join(lines) + "\n")
    fails_cleanly(estimate(pool, tmp_path), tmp_path, capsys, str(pool), "line 6 is ShareGPT in 'conversations', but line 1 is chat messages", "one format")


def test_bad_empty_content(tmp_path, capsys):
    pool = chat_pool(tmp_path, [{"role": "user", "content": "  "}, {"role": "assistant", "content": "4"}])
    fails_cleanly(estimate(pool, tmp_path), tmp_path, capsys, str(pool), "line 4: turn 1 (user) has empty content")


def test_bad_unknown_format(tmp_path, capsys):
    pool = chat_pool(tmp_path)
    fails_cleanly(estimate(pool, tmp_path, "--format", "xml"), tmp_path, capsys, "--format 'xml': choose one of auto, chat, sharegpt, alpaca, fields")


def test_bad_answer_pattern(tmp_path, capsys):
    pool = chat_pool(tmp_path)
    fails_cleanly(estimate(pool, tmp_path, "--answer-pattern", "answer is \\w"), tmp_path, capsys, "--answer-pattern", "needs exactly one group")


def test_bad_file_that_is_not_utf8_takes_an_encoding(tmp_path, capsys):
    pool = tmp_path/"latin.csv"
    pool.write_bytes("text\n".encode() + "".join(f"Ça fait {i} ?\n" for i in range(20)).encode("latin-1"))
    fails_cleanly(estimate(pool, tmp_path, "--input-field", "text"), tmp_path, capsys, str(pool), "not UTF-8 text (byte 0xc7", "--encoding")
    # read with its encoding, it gets as far as the next check: 20 examples are too few for k = 2 and nothing is computed
    fails_cleanly(estimate(pool, tmp_path, "--input-field", "text", "--encoding", "latin-1", "--k", "3"), tmp_path, capsys, "the pool holds 20 examples")
    assert read_pool(pool, input_field="text", encoding="latin-1")[0].input == "Ça fait 0 ?"


def tiny_folder(tiny, folder):
    model, tokenizer = tiny
    model.save_pretrained(folder/"tiny"); tokenizer.save_pretrained(folder/"tiny")
    return str(folder/"tiny")


@pytest.mark.parametrize("body, expected", [
    ("return 1.5", "returned 1.5 for 4 test examples, not a number in [0, 1]"),
    ("return float('nan')", "returned nan for 4 test examples, not a number in [0, 1]"),
    ("if FIRST in references: raise ValueError('not this one')\n    return 0.5", "raised ValueError (not this one) on test example"),
])
def test_bad_metric_that_returns_nonsense_or_raises(tmp_path, capsys, monkeypatch, tiny, body, expected):
    from dataeff.finetune import load_curve_data
    models, code, work = (tmp_path/name for name in ("models", "code", "work"))
    for folder in (models, code, work): folder.mkdir()
    model = tiny_folder(tiny, models)
    labelled = work/"pool.jsonl"
    labelled.write_text("".join(json.dumps({"id": f"q{i}", "input": f"What is {i} plus one?", "target": str(i + 1)}) + "\n" for i in range(20)))
    first = load_curve_data(labelled, [0]).test[0]  # the seeded split's first test example: the one the raising metric names
    name = f"bad_metric_{abs(hash(body))}"  # a module of its own per case: Python keeps an imported module
    (code/f"{name}.py").write_text(f"FIRST = {first.target!r}\ndef score(predictions, references):\n    {body}\n")
    monkeypatch.syspath_prepend(str(code))
    err = fails_cleanly(["curve", str(labelled), "--model", model, "--metric", f"{name}:score", "--budgets", "0", "--max-new-tokens", "2",
                         "--out", str(work/"r.json"), "--quiet"], work, capsys, f"--metric {name}:score", expected).err
    if "raised" in expected: assert f"on test example {first.id!r}" in err


def test_minimum_pool_size_is_stated_once_the_same_way(tmp_path, capsys):
    "Every command that refuses a small pool says it in the one way SampleSettings.check_pool says it, and says what it read first."
    rows = [{"text": f"question {i}"} for i in range(20)]
    pool = tmp_path/"small.csv"
    pd.DataFrame(rows).to_csv(pool, index=False)
    scores = tmp_path/"s.jsonl"
    scores.write_text("".join(json.dumps(dict(id=str(i), avg_confidence=i / 20, ppl=1.0, answer="", model="m")) + "\n" for i in range(20)))
    said = "read 20 examples (0 labelled) from"
    message = "the pool holds 20 examples, but its least-confident tenth must hold k = 4; give a pool of at least 40 examples, or lower --k"
    for args in (["estimate", str(pool), "--out", str(tmp_path/"out")], ["select", str(scores), "--pool", str(pool), "--out", str(tmp_path/"t.jsonl")],
                 ["coslow", str(pool), "--select", "--scores", str(scores)]):
        out = fails_cleanly(args + ["--input-field", "text", "--k", "4"], tmp_path, capsys, f"{pool}: {message}").out
        assert said in out and "input ← text, target ← none, id ← row number, instruction ← none, labels ← none" in out
    fails_cleanly(["demo", "--n", "20", "--k", "4", "--out", str(tmp_path/"demo")], tmp_path, capsys, f"--n 20: {message}")


def test_score_and_curve_say_what_they_read(tmp_path, capsys):
    pool = tmp_path/"p.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["1", "2", "3"]}).to_csv(pool, index=False)
    out = fails_cleanly(["score", str(pool), "--input-field", "text", "--model", str(tmp_path/"no-model")], tmp_path, capsys, "cannot load").out
    assert out.startswith(f"read 3 examples (0 labelled) from {pool} (CSV) as fields: input ← text, target ← none")
    out = fails_cleanly(["curve", str(pool), "--input-field", "text", "--target-field", "label", "--budgets", "0,50", "--out", str(tmp_path/"r.json")],
                        tmp_path, capsys, "--cap-budgets").out
    assert out.startswith(f"read 3 examples (3 labelled) from {pool}")
