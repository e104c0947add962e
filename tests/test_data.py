import json
import pytest
from dataeff.core import DataeffError
from dataeff.data import (Example, read_pool, write_examples, exact_match, normalise_answer, write_to_annotate, read_annotations,
                          annotation_instructions)


def write(tmp_path, name, text):
    (tmp_path/name).write_text(text)
    return tmp_path/name


def test_jsonl_ids_are_given_or_the_line_index(tmp_path):
    pool = read_pool(write(tmp_path, "p.jsonl", '{"input": "a"}\n{"id": "x", "input": "b", "target": 5}\n{"input": "c"}\n'))
    assert [ex.id for ex in pool] == ["0", "x", "2"]
    assert pool[1].target == "5" and pool[0].target is None


@pytest.mark.parametrize("text, message", [
    ('{"input": "a"}\n{"id": "0", "input": "b"}\n', "line 2: id '0' repeats line 1"),
    ('{"input": "a"}\n{"target": "b"}\n', "line 2: missing 'input'"),
    ('{"input": "a"}\n{"input": "b",\n', "line 2: not valid JSON"),
    ('\n\n', "no examples"),
    ('{"input": ""}\n', "line 1: 'input' is empty"),
    ('["a"]\n', "line 1: expected a JSON object"),
])
def test_bad_jsonl_names_file_line_and_fix(tmp_path, text, message):
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(DataeffError) as e: read_pool(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_bigbench_target_scores_list_choices_and_pick_the_best(tmp_path):
    task = {"task_prefix": "Q: ", "description": "ignored when there is a prefix", "examples": [
        {"input": "Which is a fruit?", "target_scores": {"car": 0, "pear": 1, "rock": 0}}]}
    [ex] = read_pool(write(tmp_path, "task.json", json.dumps(task)))
    assert ex.target == "pear" and ex.instruction == "Q:" and ex.input.endswith("- car\n- pear\n- rock")


def test_authors_lists_are_raw_prompts(tmp_path):
    pool = read_pool(write(tmp_path, "a.json", json.dumps([{"input_text": "<s>x"}, {"input_text": "<s>y", "ground_truth": "1"}])))
    assert [(ex.id, ex.raw, ex.target) for ex in pool] == [("0", True, None), ("1", True, "1")]
    with pytest.raises(DataeffError, match="item 1: missing 'input_text'"):
        read_pool(write(tmp_path, "b.json", json.dumps([{"input_text": "a"}, {"ground_truth": "1"}])))


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataeffError, match="unknown pool format"): read_pool(write(tmp_path, "p.txt", "input\n"))
    with pytest.raises(DataeffError, match="no such file"): read_pool(tmp_path/"none.jsonl")


def test_write_read_round_trip_keeps_every_field(tmp_path):
    examples = [Example("a", "x\ny", "1", "Say 1."), Example("b", "<raw>", None, None, True)]
    write_examples(tmp_path/"o.jsonl", examples)
    assert read_pool(tmp_path/"o.jsonl") == examples


def test_exact_match_normalisation():
    assert normalise_answer(" Red  Ball. ") == "redball"
    assert exact_match("2017-01-12.", "2017-01-12") and not exact_match("12", "1")


def test_annotation_round_trip(tmp_path):
    pool = [Example("a", "in a", instruction="I"), Example("b", "in b")]
    assert write_to_annotate(tmp_path/"t.jsonl", pool) == (tmp_path/"t.jsonl", tmp_path/"t.csv")  # the sheet beside the JSONL
    assert [json.loads(l)["target"] for l in (tmp_path/"t.jsonl").read_text().splitlines()] == ["", ""]
    assert (tmp_path/"t.csv").read_text().splitlines()[0] == "id,input,label"
    said = annotation_instructions(tmp_path/"t.jsonl", tmp_path/"t.csv")
    assert str(tmp_path/"t.jsonl") in said and str(tmp_path/"t.csv") in said and "--annotations" in said
    assert write_to_annotate(tmp_path/"s.csv", pool) == (tmp_path/"s.jsonl", tmp_path/"s.csv")  # a sheet path: the JSONL beside it
    with pytest.raises(DataeffError, match="'a' has an empty target"): read_annotations(tmp_path/"t.jsonl", pool)
    write_to_annotate(tmp_path/"t.jsonl", [Example("b", "in b", "known")])
    assert read_annotations(tmp_path/"t.jsonl", pool) == [Example("b", "in b", "known")]
    write(tmp_path, "t.jsonl", '{"id": "b", "input": "in b", "target": " yes "}\n{"id": "a", "input": "in a", "target": "no"}\n')
    assert read_annotations(tmp_path/"t.jsonl", pool) == [Example("b", "in b", "yes"), Example("a", "in a", "no", "I")]
    write(tmp_path, "t.jsonl", '{"id": "c", "input": "?", "target": "no"}\n')
    with pytest.raises(DataeffError, match="'c' is not in the pool"): read_annotations(tmp_path/"t.jsonl", pool)
    write(tmp_path, "t.jsonl", '{"id": "a", "input": "?", "target": "no"}\n{"id": "a", "input": "?", "target": "no"}\n')
    with pytest.raises(DataeffError, match="repeats"): read_annotations(tmp_path/"t.jsonl", pool)
