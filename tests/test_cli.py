"""The `auditdm` CLI: discovery, help, a working subcommand end to end, config errors."""
import json
import subprocess
import sys

from auditdm_jax import main as cli

TOY = "configs/examples/toy.py"


def test_every_command_module_follows_the_protocol():
  modules = cli.discover()
  assert {"info", "show-config"} <= set(modules)
  for name, path in modules.items():
    module = __import__(path, fromlist=["run"])
    assert isinstance(module.HELP, str) and module.HELP, name
    assert callable(module.run), name


def test_help_lists_commands():
  out = subprocess.run([sys.executable, "-m", "auditdm_jax.main", "--help"], capture_output=True, text=True,
                       check=True).stdout
  assert "show-config" in out and "info" in out


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


def test_commands_that_need_a_workdir_say_so(capsys):
  assert cli.main(["generate"]) == 2
  assert "auditdm generate: error: --workdir is required" in capsys.readouterr().err
