"""Checks shared by the command-line tests."""
from dataeff.cli import main


def files_under(folder): return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def fails_cleanly(args, folder, capsys, *expected):
    "Run the CLI; check exit 2, a one-line message holding `expected`, no traceback and no new file under `folder`."
    before = files_under(folder)
    capsys.readouterr()
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err + captured.out, err
    for text in expected: assert text in err, (text, err)
    assert files_under(folder) == before
    return captured
