"""How every console script that returns an exit code ends (`si_jax.cli.console`): the code
passed through, Ctrl-C as one line and exit code 130, and a reader of stdout that goes away
(`si-sweep ... --dry_run | head`) as a quiet exit code 1."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from si_jax.cli import console as console_lib
from si_jax.cli import convert as convert_cli
from si_jax.cli import eval as eval_cli
from si_jax.tools.launch import cli as launch_cli
from si_jax.tools.sweep import cli as sweep_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exit_code(main, *args, **kwargs):
  with pytest.raises(SystemExit) as e:
    console_lib.console(main, *args, **kwargs)
  return e.value.code


def _interrupt():
  raise KeyboardInterrupt


def test_the_exit_code_of_main_is_the_commands():
  assert _exit_code(lambda: 0, "si-x") == 0
  assert _exit_code(lambda: 2, "si-x") == 2
  assert _exit_code(lambda: None, "si-x") in (0, None)  # SystemExit(None): success


def test_ctrl_c_is_one_line_and_exit_code_130(capsys):
  assert _exit_code(_interrupt, "si-x") == 130
  assert capsys.readouterr().err == "\nsi-x: interrupted\n"
  assert _exit_code(_interrupt, "si-x", interrupted="interrupted; run it again") == 130
  assert capsys.readouterr().err == "\nsi-x: interrupted; run it again\n"


def test_a_closed_stdout_exits_quietly_and_another_broken_pipe_is_raised(monkeypatch):
  read, write = os.pipe()
  os.close(read)  # the reader (`| head`) has gone
  stdout = os.fdopen(write, "w")
  monkeypatch.setattr(sys, "stdout", stdout)

  def main():
    print("row", flush=True)
    return 0

  try:
    assert _exit_code(main, "si-x") == 1
    print("after", flush=True)  # stdout now goes to /dev/null: no second error
  finally:
    monkeypatch.undo()
    stdout.close()

  def other_pipe():  # a pipe the command writes to itself, stdout fine
    raise BrokenPipeError(32, "Broken pipe")

  with pytest.raises(BrokenPipeError):
    console_lib.console(other_pipe, "si-x")


@pytest.mark.parametrize("module,name,message", [
    (sweep_cli, "si-sweep", "interrupted; the same command resumes the sweep"),
    (launch_cli, "si-launch", "interrupted"),
    (convert_cli, "si-convert", "interrupted"),
    (eval_cli, "si-eval", "interrupted")])
def test_every_console_script_ends_through_console(module, name, message, monkeypatch, capsys):
  monkeypatch.setattr(module, "main", lambda: 3)
  with pytest.raises(SystemExit) as e:
    module.run()
  assert e.value.code == 3
  monkeypatch.setattr(module, "main", _interrupt)
  with pytest.raises(SystemExit) as e:
    module.run()
  assert e.value.code == 130 and capsys.readouterr().err == f"\n{name}: {message}\n"


def test_a_command_piped_into_head_ends_quietly_with_exit_code_1():
  """A real pipe whose reader exits after one line, as in `si-sweep ... --dry_run | head`."""
  program = ("from si_jax.cli.console import console\n"
             "def main():\n"
             "  for i in range(10000):\n"
             "    print(f'si-train --workdir runs/{i} ' + 'x' * 100)\n"
             "  return 0\n"
             "console(main, 'si-x')\n")
  p = subprocess.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(program)} | head -n 1; "
                     "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                     capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
  assert p.stdout.startswith("si-train --workdir runs/0 ") and p.stdout.count("\n") == 1
  assert p.returncode == 1 and p.stderr == "", p.stderr
