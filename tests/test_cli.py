import subprocess, sys
from dataeff.cli import main, COMMANDS


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_command_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "dataeff.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS: assert name in out.stdout


def _options(name):
    "Every option of subcommand `name` (and of its own subcommands), as {option string: (command, action)}."
    import argparse
    from dataeff.cli import build_parser
    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    if where or sub == name: yield from walk(p, f"{where} {sub}".strip())
            elif action.option_strings and action.dest != "help":
                for option in action.option_strings: yield option, (where, action)
    return list(walk(build_parser(name), ""))


def _kind(action):
    "What an option takes: its action, its value type and its choices (argparse's choice-checking type functions compare by their choices)."
    kind = "str" if action.type is None else getattr(action.type, "__name__", repr(action.type))  # argparse hands over text when no type is given
    if "choice" in kind or action.choices is not None: kind = "choice"
    return type(action).__name__, kind, tuple(action.choices) if action.choices is not None else None


def test_a_shared_option_has_one_type_and_one_set_of_choices():
    "One vocabulary: an option two subcommands share takes the same kind of value, with the same choices, in both."
    seen, clashes = {}, []
    for name in COMMANDS:
        for option, (where, action) in _options(name):
            kind = _kind(action)
            first = seen.setdefault(option, (where, kind))
            if first[1] != kind: clashes.append(f"{option}: {first[0]} {first[1]} but {where} {kind}")
    assert clashes == []
    assert {"--model", "--target", "--device", "--dtype", "--seed", "--k", "--family"} <= set(seen)


def test_the_walk_sees_a_clash():
    "The check above can fail: two actions of different types under one option are told apart."
    import argparse
    p = argparse.ArgumentParser()
    a, b = p.add_argument("--x", type=int), argparse.ArgumentParser().add_argument("--x", type=float)
    c = argparse.ArgumentParser().add_argument("--x", choices=["a", "b"])
    assert len({_kind(a), _kind(b), _kind(c)}) == 3


def test_model_always_names_a_model():
    "--model loads a model wherever it appears; the file prefix of curves has its own name."
    for name in COMMANDS:
        for option, (where, action) in _options(name):
            if option == "--model": assert "model" in action.help and "prefix" not in action.help, (where, action.help)
    assert any(o == "--curve-prefix" for o, _ in _options("savings")) and any(o == "--coslow-table" for o, _ in _options("savings"))


def _imports():
    "{module: modules of the package it imports}, read from the source: top-level and in-function imports alike."
    import ast
    from pathlib import Path
    import dataeff
    folder = Path(dataeff.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "_modidx"}
    graph = {}
    for m in modules:
        found = set()
        for node in ast.walk(ast.parse((folder/f"{m}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module] if node.module else [a.name for a in node.names]
                if node.level == 0: names = [n.removeprefix("dataeff.") for n in names if n and n.startswith("dataeff.")] + \
                                          ([a.name for a in node.names] if node.module == "dataeff" else [])
                found |= {n.split(".")[0] for n in names if n}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dataeff.")}
        graph[m] = (found & modules) - {m}
    return graph


def _cycles(graph):
    "Every import cycle of `graph`, each as the list of modules around it."
    cycles, state = [], {}
    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open": cycles.append(path[path.index(d):] + [d])
            elif d not in state: visit(d, path + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state: visit(m, [m])
    return cycles


def test_no_module_imports_one_that_imports_it_back():
    graph = _imports()
    assert {"pipeline", "plan", "savings", "curves"} <= set(graph) and "curves" in graph["plan"]
    assert _cycles(graph) == []
    assert _cycles({"plan": {"savings"}, "savings": {"plan"}}) == [["plan", "savings", "plan"]]  # the check finds a circle
