"Bring your own data: every pool format read into the same examples, the CSV annotation round trip, and each bad input named in one line."
import dataclasses, json
import pytest
import pandas as pd
import datasets
from dataeff.core import DataeffError
from dataeff.cli import main
from dataeff.confidence import score_pool
from dataeff.data import Example, read_pool, read_annotations, write_to_annotate, annotation_text
from dataeff.pipeline import estimate
from dataeff.tasks import make_task
from cli_checks import fails_cleanly

datasets.disable_progress_bars()
ROWS = [{"qid": "7", "text": "Is the sky blue?", "label": "yes"}, {"qid": "8", "text": "Is fire cold?", "label": "no"},
        {"qid": "9", "text": "Do fish swim?", "label": "yes"}]
FIELDS = dict(input_field="text", target_field="label", id_field="qid")
EXPECTED = [Example(r["qid"], r["text"], r["label"]) for r in ROWS]
NAMES = ["no", "yes"]


def class_label_dataset(rows=ROWS):
    "The rows as a `datasets.Dataset` whose label is a ClassLabel (stored as its index)."
    features = datasets.Features(qid=datasets.Value("string"), text=datasets.Value("string"), label=datasets.ClassLabel(names=NAMES))
    return datasets.Dataset.from_dict({"qid": [r["qid"] for r in rows], "text": [r["text"] for r in rows],
                                       "label": [NAMES.index(r["label"]) for r in rows]}, features=features)


def write_source(kind, folder, rows=ROWS):
    "Write `rows` as the pool format `kind` under `folder` (or build the in-memory object); returns what to pass to read_pool."
    frame = pd.DataFrame(rows)
    if kind == "csv": frame.to_csv(folder/"pool.csv", index=False); return folder/"pool.csv"
    if kind == "tsv": frame.to_csv(folder/"pool.tsv", sep="\t", index=False); return folder/"pool.tsv"
    if kind == "parquet": frame.to_parquet(folder/"pool.parquet"); return folder/"pool.parquet"
    if kind == "json": (folder/"pool.json").write_text(json.dumps(rows)); return folder/"pool.json"
    if kind == "jsonl": frame.to_json(folder/"pool.jsonl", orient="records", lines=True); return folder/"pool.jsonl"
    if kind == "json lines named .json": frame.to_json(folder/"lines.json", orient="records", lines=True); return folder/"lines.json"
    if kind == "parquet without extension": frame.to_parquet(folder/"pool.data"); return folder/"pool.data"
    if kind == "save_to_disk": class_label_dataset(rows).save_to_disk(folder/"disk"); return folder/"disk"
    if kind == "dataset": return class_label_dataset(rows)
    if kind == "dataframe": return frame
    if kind == "dicts": return [dict(r) for r in rows]
    raise ValueError(kind)


FORMATS = ["csv", "tsv", "parquet", "json", "jsonl", "json lines named .json", "parquet without extension", "save_to_disk", "dataset", "dataframe", "dicts"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_to_the_same_examples(tmp_path, kind):
    pool = read_pool(write_source(kind, tmp_path), **FIELDS)
    assert pool == EXPECTED
    assert pool.labels == (tuple(NAMES) if kind in ("save_to_disk", "dataset") else None)  # a ClassLabel's names are the answer set


def test_parquet_written_by_datasets_keeps_its_class_label_names(tmp_path):
    class_label_dataset().to_parquet(tmp_path/"hf.parquet")
    pool = read_pool(tmp_path/"hf.parquet", **FIELDS)
    assert pool == EXPECTED and pool.labels == tuple(NAMES)


def test_ids_are_text_and_default_to_the_row_number(tmp_path):
    pd.DataFrame({"id": [7, 8], "input": ["a", "b"]}).to_csv(tmp_path/"p.csv", index=False)
    assert [ex.id for ex in read_pool(tmp_path/"p.csv")] == ["7", "8"]  # not 7.0
    pd.DataFrame({"id": [7, None], "input": ["a", "b"]}).to_parquet(tmp_path/"p.parquet")  # pandas stores the ints as floats
    assert [ex.id for ex in read_pool(tmp_path/"p.parquet")] == ["7", "1"]
    assert [ex.id for ex in read_pool(write_source("csv", tmp_path), input_field="text")] == ["0", "1", "2"]


def test_instruction_as_text_or_column_and_labels_as_answer_set(tmp_path):
    pool = read_pool(write_source("csv", tmp_path), **FIELDS, instruction="Answer yes or no.", labels="yes,no")
    assert {ex.instruction for ex in pool} == {"Answer yes or no."} and pool.labels == ("yes", "no")
    rows = [dict(r, task=f"Task {i}") for i, r in enumerate(ROWS)]
    assert [ex.instruction for ex in read_pool(rows, **FIELDS, instruction_field="task")] == ["Task 0", "Task 1", "Task 2"]
    with pytest.raises(DataeffError, match="not both"): read_pool(rows, **FIELDS, instruction="x", instruction_field="task")


def test_unlabelled_default_fields_keep_todays_jsonl(tmp_path):
    "Without --target-field an absent or empty target is an unlabelled row, as in our JSONL."
    pd.DataFrame({"input": ["a", "b"], "target": ["1", ""]}).to_csv(tmp_path/"p.csv", index=False)
    assert [ex.target for ex in read_pool(tmp_path/"p.csv")] == ["1", None]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "dicts", "csv", "tsv"])
def test_an_empty_answer_is_kept_and_a_missing_label_is_none(tmp_path, kind):
    "Outside a spreadsheet an empty target is an empty answer (\"\") and a null one a missing label; a sheet's empty cell is a missing label."
    rows = [{"id": "1", "input": "a", "target": ""}, {"id": "2", "input": "b", "target": None}, {"id": "3", "input": "c", "target": "yes"}]
    sheet = kind in ("csv", "tsv")
    assert [ex.target for ex in read_pool(write_source(kind, tmp_path, rows))] == ([None, None, "yes"] if sheet else ["", None, "yes"])
    # naming the target field asks for a label on every row: an empty answer is one (outside a sheet), a null or an empty cell is not
    with pytest.raises(DataeffError, match=f"{2 if sheet else 1} of 3 examples have no label in 'target'"): read_pool(write_source(kind, tmp_path, rows), target_field="target")
    if not sheet: assert [ex.target for ex in read_pool(write_source(kind, tmp_path, rows[::2]), target_field="target")] == ["", "yes"]


def test_step_functions_take_any_pool(tiny, tmp_path):
    model, tokenizer = tiny
    scores = score_pool(model, tokenizer, read_pool(pd.DataFrame(ROWS), **FIELDS), tmp_path/"s.jsonl", progress=False)  # score_pool takes Examples
    assert [s["id"] for s in scores] == ["7", "8", "9"]


# ---- bad input, named: one line naming the file, the row or column and the fix; exit 2; no traceback; nothing written

def labelled_rows(n=20):
    return [{"qid": f"q{i}", "text": f"What is {i} plus 1?", "label": str(i + 1)} for i in range(n)]


def estimate_args(pool, folder, *extra):
    return ["estimate", str(pool), "--out", str(folder/"out"), "--k", "2", "--quiet", "--borrow-calibration", *extra]  # smollm2-135m borrows Llama's


def test_missing_input_column_lists_the_columns_in_every_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # curve's default results file would go here
    pool = write_source("csv", tmp_path)
    flags = ["--input-field", "question", "--target-field", "label"]
    for args in (["score", str(pool)], ["select", str(tmp_path/"scores.jsonl"), "--pool", str(pool)], ["coslow", str(pool)],
                 estimate_args(pool, tmp_path), ["curve", str(pool), "--budgets", "0"]):
        fails_cleanly(args + flags, tmp_path, capsys, str(pool), "no column 'question'", "'qid', 'text', 'label'", "--input-field")


@pytest.mark.parametrize("value, message", [("", "row 3: 'text' is empty"), (None, "row 1: missing 'text'")])
def test_empty_or_null_input(tmp_path, capsys, value, message):
    rows = labelled_rows()
    rows[1]["text"] = value
    kind = "csv" if value == "" else "parquet"  # a CSV cell is empty, a Parquet cell can be null (row numbers: the sheet's, 0-based)
    pool = write_source(kind, tmp_path, rows)
    fails_cleanly(estimate_args(pool, tmp_path, "--input-field", "text"), tmp_path, capsys, str(pool), message, "fill it in or remove the row")


@pytest.mark.parametrize("kind, message", [("csv", "2 of 20 examples have no label in 'label' (row 4, row 9)"),
                                           ("parquet", "2 of 20 examples have no label in 'label' (row 2, row 7)")])
def test_empty_labels_in_a_labelled_pool_are_counted(tmp_path, capsys, kind, message):
    "Every empty label is counted and named (the first few), not only the first."
    rows = labelled_rows()
    for i in (2, 7): rows[i]["label"] = "" if kind == "csv" else None
    pool = write_source(kind, tmp_path, rows)
    fails_cleanly(estimate_args(pool, tmp_path, "--input-field", "text", "--target-field", "label"), tmp_path, capsys,
                  str(pool), message, "--target-field makes every row need a label")


def test_duplicate_ids(tmp_path, capsys):
    rows = labelled_rows()
    rows[5]["qid"] = "q2"
    pool = write_source("csv", tmp_path, rows)
    fails_cleanly(estimate_args(pool, tmp_path, "--input-field", "text", "--id-field", "qid"), tmp_path, capsys,
                  str(pool), "row 7: id 'q2' repeats row 4", "give every example its own id")


def test_label_outside_the_answer_set_in_the_pool(tmp_path, capsys):
    rows = labelled_rows()
    pool = write_source("csv", tmp_path, [dict(r, label="yes" if i != 3 else "maybe") for i, r in enumerate(rows)])
    fails_cleanly(estimate_args(pool, tmp_path, "--input-field", "text", "--target-field", "label", "--labels", "yes,no"), tmp_path, capsys,
                  str(pool), "row 5: label 'maybe' is not in the answer set (yes, no)", "--labels")


def test_save_to_disk_folder_without_the_asked_split(tmp_path, capsys):
    datasets.DatasetDict({"train": class_label_dataset(), "test": class_label_dataset()}).save_to_disk(tmp_path/"disk")
    fails_cleanly(estimate_args(tmp_path/"disk", tmp_path, "--input-field", "text", "--split", "validation"), tmp_path, capsys,
                  "disk: no split 'validation' here; its splits are train, test", "--split")
    fails_cleanly(estimate_args(tmp_path/"disk", tmp_path, "--input-field", "text"), tmp_path, capsys, "holds the splits train, test; choose one with --split")


@pytest.mark.parametrize("name, content, fmt", [("pool.parquet", b"not parquet at all", "Parquet"), ("pool.csv", b"text\n\xff\xfe\x00bad\n", "CSV"),
                                                ("pool.csv", b'text,label\n"a,1\n', "CSV"), ("pool.jsonl", b"\xff\xfe", "JSONL")])
def test_unreadable_file_says_which_format_it_was_taken_for(tmp_path, capsys, name, content, fmt):
    (tmp_path/name).write_bytes(content)
    fails_cleanly(estimate_args(tmp_path/name, tmp_path, "--input-field", "text"), tmp_path, capsys, str(tmp_path/name), f"not readable as {fmt}")


def annotation_pool(folder):
    "A 20-row unlabelled CSV pool, its examples, and a filled-in to_annotate.csv for its first 2 rows."
    rows = [{"qid": r["qid"], "text": r["text"]} for r in labelled_rows()]
    pool = write_source("csv", folder, rows)
    examples = read_pool(pool, input_field="text", id_field="qid", instruction="Answer with a number.", labels="1,2,3")
    sheet = folder/"to_annotate.csv"
    write_to_annotate(sheet, examples[:2], examples.labels)
    filled = pd.read_csv(sheet, dtype=str, keep_default_na=False).assign(label=["1", "2"])
    return pool, examples, sheet, filled


ANNOTATION_FLAGS = ["--input-field", "text", "--id-field", "qid", "--instruction", "Answer with a number.", "--labels", "1,2,3"]


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.assign(id=["q0", "q99"]), ["id 'q99' is not in the pool (row 3)", "annotate only the ids written to this file"]),
    (lambda f: f.assign(label=["1", "7"]), ["row 3: label '7' is not in the answer set (1, 2, 3)", "--labels"]),
    (lambda f: f.assign(input=[f.input[0], "Answer with a number.\n\nWhat is 1 plus 2?"]), ["row 3: the input of id 'q1'", "the pool changed"]),
    (lambda f: f.assign(id=["q0", "q0"]), ["row 3: id 'q0' repeats row 2"]),
    (lambda f: f.assign(label=["1", ""]), ["1 of 2 labels missing (first id 'q1')"]),
])
def test_bad_annotations(tmp_path, capsys, change, expected):
    pool, _, sheet, filled = annotation_pool(tmp_path)
    change(filled).to_csv(sheet, index=False)
    fails_cleanly(estimate_args(pool, tmp_path, *ANNOTATION_FLAGS, "--annotations", str(sheet)), tmp_path, capsys, str(sheet), *expected)


def test_annotation_sheet_shows_instruction_input_and_answer_set(tmp_path):
    _, examples, sheet, filled = annotation_pool(tmp_path)
    assert list(filled.columns) == ["id", "input", "label", "answers"]
    assert filled.input[0] == annotation_text(examples[0]) == "Answer with a number.\n\nWhat is 0 plus 1?" and filled.answers[0] == "1 | 2 | 3"
    filled.to_csv(sheet, index=False)
    assert [(ex.id, ex.target) for ex in read_annotations(sheet, examples)] == [("q0", "1"), ("q1", "2")]


# ---- end to end on the default model (SmolLM2-135M-Instruct), as a user runs it

E2E = ["--k", "4", "--no-baselines", "--quiet", "--target", "0.9", "--borrow-calibration"]


@pytest.fixture(scope="module")
def task_rows():
    "40 labelled object_counting examples as the user's own rows: `text`, `label`."
    return [{"text": ex.input, "label": ex.target} for ex in make_task("object_counting", 40, seed=0)]


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory):
    "One output folder for the three formats: the same examples reuse the scores and the CoS-Low, which shows they read the same."
    return tmp_path_factory.mktemp("e2e") / "out"


@pytest.mark.parametrize("kind", ["csv", "parquet", "save_to_disk"])
def test_estimate_end_to_end_on_the_default_model(tmp_path, capsys, task_rows, shared_out, kind):
    if kind == "save_to_disk": datasets.Dataset.from_list(task_rows).save_to_disk(tmp_path/"disk"); pool = tmp_path/"disk"
    else: pool = write_source(kind, tmp_path, task_rows)
    assert main(["estimate", str(pool), "--input-field", "text", "--target-field", "label", "--out", str(shared_out), *E2E]) == 0
    out = capsys.readouterr().out
    assert "target 0.9: annotate about" in out
    report = json.loads((shared_out/"report.json").read_text())
    assert report["status"] == "complete" and report["n_pool"] == 40 and report["coslow"]["k_requested"] == 4
    first = shared_out.parent/"first_coslow.json"
    if not first.exists(): first.write_text(json.dumps(report["coslow"]))
    assert report["coslow"] == json.loads(first.read_text())  # the same examples from every format


def test_csv_round_trip_on_the_default_model(tmp_path, capsys, task_rows):
    pd.DataFrame([{"text": r["text"]} for r in task_rows]).to_csv(tmp_path/"pool.csv", index=False)
    args = ["estimate", str(tmp_path/"pool.csv"), "--input-field", "text", "--out", str(tmp_path/"out"), *E2E]
    assert main(args) == 0
    assert "to_annotate.csv" in capsys.readouterr().out and not (tmp_path/"out/report.json").exists()
    sheet = pd.read_csv(tmp_path/"out/to_annotate.csv", dtype=str, keep_default_na=False)
    assert len(sheet) == 4 and (sheet.label == "").all()
    sheet.loc[:2, "label"] = [task_rows[int(i)]["label"] for i in sheet.id[:3]]  # the annotator stops after three
    sheet.to_csv(tmp_path/"out/to_annotate.csv", index=False)
    assert main(args + ["--annotations", str(tmp_path/"out/to_annotate.csv")]) == 2
    assert "1 of 4 labels missing" in capsys.readouterr().err and not (tmp_path/"out/report.json").exists()
    sheet["label"] = [task_rows[int(i)]["label"] for i in sheet.id]
    sheet.to_csv(tmp_path/"out/to_annotate.csv", index=False)
    assert main(args + ["--annotations", str(tmp_path/"out/to_annotate.csv")]) == 0
    assert "target 0.9: annotate about" in capsys.readouterr().out
    assert json.loads((tmp_path/"out/report.json").read_text())["status"] == "complete"


def test_python_api_takes_dataframes_datasets_and_dicts(tmp_path, tiny, task_rows):
    "`dataeff.estimate` on in-memory pools, with the same field names as the command line (the tiny model: only the plumbing is tested)."
    model, tokenizer = tiny
    folder = tmp_path/"tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    fast = dict(model=str(folder), k=4, lora_r=8, lora_alpha=16, resamples=200, progress=False, baselines=False,
                input_field="text", target_field="label", borrow_calibration=True)
    reports = [estimate(source, out=tmp_path/name, **fast) for name, source in
               [("frame", pd.DataFrame(task_rows)), ("dataset", datasets.Dataset.from_list(task_rows)), ("dicts", task_rows)]]
    assert [r.status for r in reports] == ["complete"] * 3 and [r.pool for r in reports] == ["the DataFrame", "the Dataset", "the list of dicts"]
    same = [dataclasses.replace(r.coslow, timings={}) for r in reports]  # the CoS-Low report in full but its wall times
    assert same[0] == same[1] == same[2]


def test_select_writes_the_sheet_beside_the_jsonl(tmp_path, capsys):
    rows = [{"qid": f"q{i}", "text": f"question {i}"} for i in range(20)]
    pool = write_source("csv", tmp_path, rows)
    scores = [dict(id=r["qid"], avg_confidence=i / 20, ppl=1.0, answer="", model="m") for i, r in enumerate(rows)]
    (tmp_path/"s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    out = tmp_path/"to_annotate.jsonl"
    assert main(["select", str(tmp_path/"s.jsonl"), "--pool", str(pool), "--input-field", "text", "--id-field", "qid", "--labels", "a,b",
                 "--k", "2", "--out", str(out)]) == 0
    assert "to_annotate.csv" in capsys.readouterr().out
    sheet = pd.read_csv(tmp_path/"to_annotate.csv", dtype=str, keep_default_na=False)
    assert sheet.id.tolist() == ["q0", "q1"] and sheet.answers.tolist() == ["a | b"] * 2 and (sheet.label == "").all()
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["q0", "q1"]


def test_step_functions_take_in_memory_pools(tmp_path, tiny, task_rows):
    "A DataFrame or a list of dicts, read by `read_pool` with the same field names, gives `score_pool` and `compute_coslow` the same numbers as `Example`s."
    from dataeff.coslow import compute_coslow
    model, tokenizer = tiny
    rows = task_rows[:4]
    examples = read_pool(rows, input_field="text", target_field="label")
    run = dict(seed=0, lora_r=8, lora_alpha=16, resamples=50, baselines=False, progress=False)
    reference = compute_coslow(model, tokenizer, examples, **run)
    for source in (pd.DataFrame(rows), rows):  # compute_coslow takes Examples: read_pool reads the pool
        got = compute_coslow(model, tokenizer, read_pool(source, input_field="text", target_field="label"), **run)
        assert got.coslow == reference.coslow and got.interval == reference.interval
    with pytest.raises(DataeffError, match="text"): read_pool(pd.DataFrame(rows))  # no 'input' column: named
    scored = score_pool(model, tokenizer, read_pool(pd.DataFrame(rows), input_field="text"), tmp_path/"s.jsonl", progress=False)
    assert [s["id"] for s in scored] == [ex.id for ex in examples]
