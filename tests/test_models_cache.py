"""`qwen-mlx models`: list, rm, prune and sources, against a real (offline) Hugging Face
cache layout and the real command in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMIT = "0" * 40
DEAD_PID = 999_999_999  # above any pid_max


@pytest.fixture
def env(tmp_path, tiny_hf):
    """A Hugging Face cache holding Qwen/Qwen3-4B (and a repo of another family)."""
    for repo_id in ("Qwen/Qwen3-4B", "acme/other-model"):
        repo = tmp_path / "hf" / "hub" / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(tiny_hf, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
            "QWEN_MLX_HOME": str(tmp_path / "home")}


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "qwen_mlx", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def listed(env) -> list[dict]:
    result = cli(env, "models", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_list_prune_rm_and_sources(env, tmp_path, tiny_hf):
    home = tmp_path / "home" / "models"
    local = tmp_path / ("local-" + "x" * 150) / "tiny"  # listed whole, however long
    shutil.copytree(tiny_hf, local)
    assert cli(env, "convert", "qwen3-4b").returncode == 0
    assert cli(env, "convert", local, "--q8").returncode == 0

    hub_entry, local_entry = sorted(listed(env), key=lambda m: m["name"] != "Qwen/Qwen3-4B")
    hub_folder = home / "Qwen--Qwen3-4B" / "q4"
    assert hub_entry | {"last_used": 0} == {
        "path": str(hub_folder), "name": "Qwen/Qwen3-4B", "recipe": "q4",
        "source_path": str(tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-4B" / "snapshots" /
                           COMMIT),
        "revision": COMMIT, "nbytes": folder_bytes(hub_folder), "last_used": 0,
        "complete": True, "orphaned": False, "kl": None}  # convert measured nothing here
    assert (local_entry["name"], local_entry["recipe"], local_entry["revision"]) == \
        (str(local), "q8", None)
    text = cli(env, "models")
    assert "Qwen/Qwen3-4B" in text.stdout and str(local) in text.stdout

    # Using a model refreshes its last use.
    os.utime(hub_folder / "qwen-mlx.json", (1_600_000_000, 1_600_000_000))
    assert cli(env, "generate", "qwen3-4b", "-p", "Hi", "--max-tokens", "1").returncode == 0
    assert [m["last_used"] > 1_600_000_000 for m in listed(env)] == [True, True]

    # A killed run's partial folder and a conversion whose source was deleted.
    partial = hub_folder.with_name(f".q8.partial-{DEAD_PID}")
    partial.mkdir()
    (partial / ".qwen-mlx-partial").touch()
    (partial / "model.safetensors").write_bytes(b"x" * 1000)
    shutil.rmtree(local)
    assert {m["name"]: m["orphaned"] for m in listed(env)} == {"Qwen/Qwen3-4B": False,
                                                               str(local): True}
    assert "1 leftovers of interrupted runs and 1 orphaned conversions" in \
        cli(env, "models").stderr
    dry = cli(env, "models", "prune", "--dry-run")
    assert dry.stderr.splitlines() == [
        f"would remove partial folder {partial} (left by process {DEAD_PID}), 0.0 MB",
        f"would remove {local_entry['path']} (source gone, {local_entry['nbytes'] / 1e6:.1f} "
        f"MB)"]
    assert partial.is_dir() and Path(local_entry["path"]).is_dir()
    pruned = cli(env, "models", "prune")
    assert pruned.returncode == 0 and not partial.exists()
    assert not Path(local_entry["path"]).parent.exists()
    assert [m["name"] for m in listed(env)] == ["Qwen/Qwen3-4B"]
    assert json.loads(cli(env, "models", "--json").stdout) == listed(env)  # the group's too
    assert cli(env, "models", "prune").stderr == "nothing to prune\n"

    # Sources: the Qwen3 repos of the Hugging Face cache only.
    sources = json.loads(cli(env, "models", "sources", "--json").stdout)
    assert [(s["repo_id"], s["revisions"]) for s in sources] == [("Qwen/Qwen3-4B", [COMMIT])]

    # rm leaves the Hugging Face cache alone unless asked.
    snapshot = Path(hub_entry["source_path"])
    removed = cli(env, "models", "rm", "qwen3-4b")
    assert removed.stderr == f"removed Qwen/Qwen3-4B (q4, {hub_entry['nbytes'] / 1e6:.1f} MB) " \
                             f"from {hub_folder}\n"
    assert listed(env) == [] and snapshot.is_dir()
    gone = cli(env, "models", "rm", "qwen3-4b", "--source")
    assert gone.returncode == 0 and "removed Qwen/Qwen3-4B from the Hugging Face cache" in \
        gone.stderr
    assert not snapshot.exists()
    assert (tmp_path / "hf" / "hub" / "models--acme--other-model").is_dir()
    assert cli(env, "models", "sources").stderr == "no Qwen3 models in the Hugging Face cache\n"


def test_rm_of_an_unknown_model_is_one_line(env, tmp_path):
    result = cli(env, "models", "rm", "nothing-here")
    assert result.returncode == 1
    assert result.stderr == (f"error: no converted model 'nothing-here' in "
                             f"{tmp_path}/home/models (`qwen-mlx models` lists them)\n")


def test_rm_refuses_a_cache_folder_holding_someone_elses_files(env, tmp_path):
    assert cli(env, "convert", "qwen3-4b").returncode == 0
    folder = tmp_path / "home" / "models" / "Qwen--Qwen3-4B" / "q4"
    (folder / "notes.txt").write_text("mine")
    result = cli(env, "models", "rm", "qwen3-4b")
    assert result.returncode == 1
    assert result.stderr == (f"error: {folder} holds notes.txt, which qwen-mlx did not write; "
                             f"remove it by hand if you mean to\n")
    assert (folder / "notes.txt").read_text() == "mine"


def test_bench_resolves_an_alias_like_every_command(env, tmp_path):
    """`bench qwen3-4b` once converted, then failed with 'qwen3-4b has no config.json'."""
    result = cli(env, "bench", "qwen3-4b", "--prompt-lengths", "16", "--depths", "0",
                 "--gen-tokens", "2", "-n", "1", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    assert "qwen3-4b q4" in result.stdout
    assert (tmp_path / "home" / "models" / "Qwen--Qwen3-4B" / "q4" / "qwen-mlx.json").is_file()


def test_json_of_an_empty_cache_is_an_empty_array(tmp_path):
    import os

    env = {**os.environ, "QWEN_MLX_HOME": str(tmp_path / "home"),
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for args in (("models", "--json"), ("models", "list", "--json"),
                 ("models", "sources", "--json")):
        result = cli(env, *args)
        assert result.returncode == 0 and result.stdout == "[]\n", (args, result.stderr)
    refused = cli(env, "models", "--json", "sources")
    assert refused.returncode == 1 and refused.stderr == \
        "error: --json goes after the subcommand: qwen-mlx models sources --json\n"


def test_one_recipe_of_reads_mixed_folders_right(tiny_q4_f32, copy_of):
    """A mixed folder's default bits are not its recipe (it once read as "q3")."""
    from qwen_mlx.hub.cache import recipe_name
    from qwen_mlx.hub.spec import recipe_of
    from qwen_mlx.models.provenance import PROVENANCE

    assert recipe_of(tiny_q4_f32).name == "q4-f32" == recipe_name(tiny_q4_f32)
    mixed = copy_of(tiny_q4_f32, "mixed")
    record = json.loads((mixed / PROVENANCE).read_text())
    (mixed / PROVENANCE).write_text(json.dumps({**record, "recipe": "mix-1.8gb"}))
    assert recipe_of(mixed).name == "mix-1.8gb" == recipe_name(mixed)
    (mixed / PROVENANCE).unlink()  # an MLX folder from elsewhere
    config = json.loads((mixed / "config.json").read_text())
    config["quantization"] = {"bits": 3, "group_size": 64,
                              "model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 32}}
    (mixed / "config.json").write_text(json.dumps(config))
    assert recipe_of(mixed) is None
    assert recipe_name(mixed) == "mixed, mostly 3-bit, groups of 64"
