import datetime, json
import pytest
from dataeff.cli import main
from dataeff.core import DataeffError
from dataeff.data import read_pool
from dataeff.tasks import TASKS, INSTRUCTIONS, make_task


@pytest.mark.parametrize("name", TASKS)
def test_every_task_is_seeded_labelled_and_instructed(name):
    examples = make_task(name, 30, seed=5)
    assert examples == make_task(name, 30, seed=5) and examples != make_task(name, 30, seed=6)
    assert len({ex.id for ex in examples}) == 30
    assert all(ex.target and ex.input and ex.instruction == INSTRUCTIONS[name] for ex in examples)
    assert len({ex.input for ex in examples}) > 20  # not one repeated question


def test_labels_are_exact():
    for ex in make_task("multistep_arithmetic", 100, seed=1): assert int(ex.target) == eval(ex.input.rstrip(" ="))
    for ex in make_task("boolean_expressions", 100, seed=1): assert ex.target == str(eval(ex.input[:-len(" is")]))
    for ex in make_task("date_arithmetic", 100, seed=1):
        today = datetime.date.fromisoformat(ex.input.split()[2].rstrip("."))
        amount, unit, direction = ex.input.split("date ")[1].rstrip("?").split(" ", 2)
        days = int(amount) * (7 if unit == "weeks" else 1) * (1 if direction == "from now" else -1)
        assert ex.target == (today + datetime.timedelta(days=days)).isoformat()
    for ex in make_task("tracking_shuffled_objects", 100, seed=1):
        start = dict((p.split(" has a ")[0].replace("and ", ""), p.split(" has a ")[1])
                     for p in ex.input.split("holding a ball: ")[1].split(". As")[0].split(", "))
        for swap in ex.input.split("trade balls. ")[1].split(" At the end")[0].split(". "):
            a, b = swap.split(", ")[1].split(" swap")[0].split(" and ")
            start[a], start[b] = start[b], start[a]
        assert ex.target == start[ex.input.split("game, ")[-1].split(" has the")[0]]


def test_ascii_digits_are_real_sklearn_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    ex = make_task("ascii_digits", 1, seed=0)[0]
    dark = [[c != " " for c in line] for line in ex.input.splitlines()]  # grey levels 0-1 draw as a blank
    matches = [i for i, img in enumerate(digits.images) if ((img >= 2) == dark).all() and str(digits.target[i]) == ex.target]
    assert matches


def test_bad_requests():
    with pytest.raises(DataeffError, match="unknown task 'nope'"): make_task("nope", 3)
    with pytest.raises(DataeffError, match="positive"): make_task("web_of_lies", 0)


def test_cli_make_and_list(tmp_path, capsys):
    assert main(["tasks", "make", "object_counting", "--n", "7", "--seed", "2", "--out", str(tmp_path/"p.jsonl"), "--unlabelled"]) == 0
    pool = read_pool(tmp_path/"p.jsonl")
    assert len(pool) == 7 and all(ex.target is None for ex in pool)
    assert main(["tasks", "list"]) == 0 and "ascii_digits" in capsys.readouterr().out
    assert main(["tasks", "make", "nope", "--out", str(tmp_path/"q.jsonl")]) == 2
    assert not (tmp_path/"q.jsonl").exists()
