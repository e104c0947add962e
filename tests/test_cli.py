import subprocess, sys
from dataeff.cli import main, COMMANDS


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_command_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "dataeff.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS: assert name in out.stdout
