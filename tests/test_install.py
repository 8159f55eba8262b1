"""The README's install-and-run command, as written, in a fresh copy of the repository: it
makes its own virtual environment, installs from the package registry, and chats with the
default model (here already in the model cache, so nothing is downloaded)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qwen_mlx import load
from qwen_mlx.quant.convert import convert
from qwen_mlx.models.recipes import Recipe

ROOT = Path(__file__).resolve().parents[1]


def readme_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install and run (one command)", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone has them (no .venv, no caches)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:
        shutil.copytree(ROOT, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", "build"))
    return dest


def test_the_readme_command_installs_and_chats(tmp_path, tiny_hf):
    command = readme_command()
    assert command == "./install.sh chat"
    home = tmp_path / "home"
    cached = home / "models" / "Qwen--Qwen3-4B-Instruct-2507" / "q4"
    convert(tiny_hf, cached, Recipe())
    config = cached / "generation_config.json"  # greedy, so the reply is known
    config.write_text(json.dumps({**json.loads(config.read_text()), "do_sample": False}))
    expected = load(cached).generate("Hi").text
    repo = fresh_copy(tmp_path / "repo")
    env = {**os.environ, "QWEN_MLX_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["sh", "-c", command], cwd=repo, env=env, input="Hi\n",
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == expected + "\n"
    assert f"installed: {repo}/.venv/bin/qwen-mlx" in result.stderr
    assert " generated at " in result.stderr.splitlines()[-1]
    # the installed copy (a built wheel, not the checkout) has the held-out and fit text:
    # eval without --file measures on it, and the fitted recipes' text is there
    installed = repo / ".venv" / "bin"
    evaluated = subprocess.run([str(installed / "qwen-mlx"), "eval", str(cached), "--json",
                                "--max-tokens", "512"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    figures = json.loads(evaluated.stdout)
    assert figures["tokens"] == 511 and figures["reference"] == str(tiny_hf.resolve())
    where = subprocess.run([str(installed / "python"), "-c",
                            "import qwen_mlx.quant.calibration as c; print(c.FIT, len(c.conversations()))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    folder, chats = where.stdout.split()
    assert "site-packages" in folder and int(chats) > 0


@pytest.mark.parametrize("version", ["3.9"])
def test_install_refuses_a_python_that_is_too_old(tmp_path, version):
    """macOS's own python3 is 3.9: the script says what to do instead of failing later."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f"#!/bin/sh\n# Python {version}: fails the version check\nexit 1\n")
    fake.chmod(0o755)
    repo = fresh_copy(tmp_path / "repo")
    result = subprocess.run(["/bin/sh", "./install.sh", "chat"], cwd=repo,
                            env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == ("error: qwen-mlx needs Python 3.10 or newer (macOS's own python3 "
                             "is 3.9): install one with 'brew install python@3.12' or from "
                             "python.org, then run ./install.sh again\n")
    assert not (repo / ".venv").exists()
