"""README.md stays short and its runnable commands run as written."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def runnable_blocks(text):
  """Shell commands of the fenced blocks that follow a `<!-- runnable -->` line."""
  blocks = re.findall(r"<!-- runnable -->\n```(?:bash|sh)\n(.*?)```", text, flags=re.S)
  return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_is_short_and_points_to_every_docs_page():
  text = open(README, encoding="utf-8").read()
  assert len(text.encode("utf-8")) <= 12 * 1024
  pages = sorted(f for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md"))
  assert {"audit_loop.md", "models.md", "sampler.md", "training.md", "data.md", "imagegen.md",
          "shapes_world.md"} <= set(pages)
  missing = [p for p in pages if f"docs/{p}" not in text]
  assert not missing, f"README.md does not point to {missing}"


def test_readme_runnable_commands_run_as_written(tmp_path):
  commands = runnable_blocks(open(README, encoding="utf-8").read())
  assert len(commands) >= 3
  # The `auditdm` entry point of this checkout, whatever is installed: the same argv through `python -m`.
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for command in commands:
    argv = command.split()
    assert argv[0] == "auditdm", command
    done = subprocess.run([sys.executable, "-m", "auditdm_jax.main"] + argv[1:], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    assert done.stdout.strip(), command
