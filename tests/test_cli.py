"""The `auditdm` CLI: discovery, help (lazy: the listing imports no command), a working subcommand end to end, config
errors."""
import json
import os
import re
import subprocess
import sys

import pytest

from auditdm_jax import hugepages
from auditdm_jax import main as cli

TOY = "configs/examples/toy.py"


def test_every_command_module_follows_the_protocol():
  modules = cli.discover()
  assert {"info", "show-config"} <= set(modules)
  for name, path in modules.items():
    module = __import__(path, fromlist=["run"])
    assert isinstance(module.HELP, str) and module.HELP, name
    assert cli.read_help(path) == module.HELP, name  # What the listing shows without importing the module.
    assert callable(module.run), name


def test_help_lists_every_command_and_imports_none():
  """`auditdm --help` reads each HELP from its module's source: no command module is imported, so no jax."""
  script = ("import sys\nfrom auditdm_jax import main\n"
            "try:\n  main.main(['--help'])\nfinally:\n  print(*sys.modules, file=sys.stderr)")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                        cwd=cli.REPO_ROOT, env=dict(os.environ, COLUMNS="1000"))  # This checkout; HELPs unwrapped.
  loaded = set(proc.stderr.split())
  assert not loaded & {"jax", "flax", "torch", "auditdm_jax.audit.trainer"}, loaded
  assert not [m for m in loaded if m.startswith("auditdm_jax.commands.")]
  for name, path in cli.discover().items():
    assert re.search(rf"^ +{name}\s+{re.escape(cli.read_help(path))}$", proc.stdout, re.M), name


def test_each_command_help_shows_its_flags(capsys):
  for name in cli.discover():
    with pytest.raises(SystemExit) as exit_:
      cli.main([name, "--help"])
    assert exit_.value.code == 0, name
    assert capsys.readouterr().out.startswith(f"usage: auditdm {name} [-h] [--workdir WORKDIR]"), name


def test_unknown_command_lists_the_commands(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["nope"])
  assert exit_.value.code == 2
  assert "argument COMMAND: invalid choice: 'nope' (choose from 'convert', 'demo'," in capsys.readouterr().err


def test_show_config_end_to_end_writes_resolved_json(tmp_path, capsys):
  workdir = tmp_path / "run"
  rc = cli.main(["show-config", "--config", TOY + ":res=448", "--config.lr=2e-5", "--config.input.batch_size", "8",
                 "--workdir", str(workdir)])
  assert rc == 0
  printed = json.loads(capsys.readouterr().out)
  with open(workdir / "config.json") as f:
    dumped = json.load(f)
  assert printed == dumped
  assert dumped["res"] == 448 and dumped["lr"] == 2e-5 and dumped["input"]["batch_size"] == 8


def test_config_error_exits_2_with_message(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "auditdm_jax.main", "show-config", "--config", TOY,
                         "--config.nope=1"], capture_output=True, text=True, cwd=cli.REPO_ROOT)
  assert proc.returncode == 2
  assert "unknown config key 'nope'" in proc.stderr


def test_overrides_without_config_are_rejected(capsys):
  assert cli.main(["info", "--config.lr=1"]) == 2
  assert "auditdm info: error: --config.* overrides given but `info` takes no --config" in capsys.readouterr().err


def test_info_reports_devices(capsys):
  cli.main(["info"])
  info = json.loads(capsys.readouterr().out)
  assert info["backend"] == "cpu" and info["process_count"] == 1
  assert info["local_device_count"] == len(info["devices"]) >= 1
  assert info["compile_cache"] == os.environ["JAX_COMPILATION_CACHE_DIR"]  # The test session's (conftest.py).
  assert info["huge_pages"] == hugepages.status()  # In-process: no re-exec, so "on" only where the session has it.


def test_commands_that_need_a_workdir_say_so(capsys):
  assert cli.main(["generate"]) == 2
  assert "auditdm generate: error: --workdir is required" in capsys.readouterr().err
