"""The package as users get it: a wheel carrying configs and published tables, console scripts that run from
any folder, licence and citation metadata. ``.ci/wheel_check`` also runs a tiny training job from the
wheel."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from common.resources import config_path, published_dir, shipped_path
from downstream.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("common", "upstream", "pretrain", "downstream", "benchmark", "astbench", "configs")
NOT_SHIPPED = {".venv", ".git", "exp", "build", "dist", "results", "cache", "data", "__pycache__", "tests"}


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_every_task_config_and_recipe_is_found_through_the_package(tmp_path, monkeypatch):
    for task in TASKS:
        for suffix in ("", "_finetune"):
            assert config_path("downstream", f"{task}{suffix}.yaml").is_file(), (task, suffix)
    assert config_path("pretrain", "ssast_patch_400.yaml").is_file()
    assert sorted(p.name for p in published_dir().glob("*.yaml")) == ["asit.yaml", "mae_ast.yaml",
                                                                      "ssast.yaml"]
    # repo-relative names, as the published tables and the README write them, resolve from any folder
    monkeypatch.chdir(tmp_path)
    assert shipped_path("configs/pretrain/asit_mini.yaml") == config_path("pretrain", "asit_mini.yaml")
    assert shipped_path("/abs/x.yaml") == Path("/abs/x.yaml")
    own = tmp_path / "configs" / "pretrain" / "asit_mini.yaml"  # a user's own copy in the current folder
    own.parent.mkdir(parents=True)
    own.write_text("max_steps: 1\n")
    # -c: theirs
    assert shipped_path("configs/pretrain/asit_mini.yaml") == Path("configs/pretrain/asit_mini.yaml")
    assert shipped_path("configs/pretrain/asit_mini.yaml", prefer_shipped=True) == config_path("pretrain",
                                                                                               "asit_mini.yaml")


def test_shipped_files_match_the_package_data_globs():
    """setup.cfg ships configs/*/*.yaml: a YAML file deeper down, or of another suffix, would be left out."""
    data = _setup_cfg()["options.package_data"]
    assert data["configs"].strip() == "*/*.yaml" and data["benchmark"].strip() == "published/*.yaml"
    configs = [p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*") if p.is_file()
               and "__pycache__" not in p.parts and p.name != "__init__.py"]
    assert configs and all(len(p.parts) == 2 and p.suffix == ".yaml" for p in configs)


def test_no_code_locates_shipped_files_from_its_own_path():
    """Configs and tables come from common.resources (importlib.resources), never
    ``Path(__file__)/configs``."""
    pattern = re.compile(r"__file__.*\n?.*[\"'](configs|published)[\"']")
    offenders = [str(p.relative_to(REPO)) for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    offenders += [n for n in ("run_downstream.py", "run_pretrain.py")
                  if pattern.search((REPO / n).read_text(encoding="utf-8"))]
    assert offenders == []


def test_licence_citation_and_extras():
    meta = _setup_cfg()
    assert meta["metadata"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["title"].startswith("astbench")
    refs = {r["title"].split(":")[0]: r for r in cff["references"]}
    assert set(refs) == {"SSAST", "MAE-AST", "ASiT"}
    assert refs["SSAST"]["authors"][0]["family-names"] == "Gong"
    assert "AAAI" in refs["SSAST"]["conference"]["name"]
    mae = refs["MAE-AST"]
    assert mae["authors"][0]["family-names"] == "Baade" and "Interspeech" in mae["conference"]["name"]
    assert refs["ASiT"]["authors"][0]["family-names"] == "Atito" and refs["ASiT"]["year"] == 2022
    extras = meta["options.extras_require"]
    assert "interop" not in extras and extras["s3prl"].strip().startswith("s3prl")
    # the s3prl extra is the only optional import, and only the adapter makes it
    importers = [str(p.relative_to(REPO)) for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")
                 if re.search(r"^\s*(from s3prl\b|import s3prl\b)", p.read_text(encoding="utf-8"), re.M)]
    assert importers == ["upstream/s3prl_adapter.py"]


def _copy_sources(dest: Path) -> Path:
    """The checkout without environments, outputs and tests: what a wheel is built from."""
    def ignore(folder, names):
        return [n for n in names if n in NOT_SHIPPED or n.endswith((".egg-info", ".pyc"))]

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = (tmp / "dist").glob("astbench-*.whl")
    return whl


def test_wheel_carries_data_scripts_and_metadata(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for need in ("run_downstream.py", "run_pretrain.py", "configs/__init__.py",
                 "configs/downstream/esc50.yaml",
                 "configs/pretrain/asit_base.yaml", "configs/demo/esc50.yaml",
                 "benchmark/published/ssast.yaml",
                 "astbench/hear.py", "astbench/xares.py", "astbench/s3prl.py", "upstream/s3prl_adapter.py"):
        assert need in names, need
    dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist}/entry_points.txt").decode()
    for line in ("astbench = benchmark.__main__:main", "astbench-downstream = run_downstream:main",
                 "astbench-pretrain = run_pretrain:main"):
        assert line in entry_points
    assert not any(n.startswith(("tests/", "hubconf")) for n in names)


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    """A fresh venv holding only the wheel; torch and the other dependencies come from this interpreter's
    site-packages through a .pth line, whose own .pth files (an editable install of the checkout) do not
    run."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "astbench_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([str(py), "-c",
                            "import upstream, configs, run_downstream, common.resources as r; "
                            "print(upstream.__file__); print(r.config_path('downstream'))"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(p.startswith(site) for p in where), where
    listed = subprocess.run([str(venv / "bin" / "astbench"), "run", "--list"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "ssast" in listed.stdout, listed.stderr[-2000:]
    for script in ("astbench-downstream", "astbench-pretrain"):
        proc = subprocess.run([str(venv / "bin" / script), "--help"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr[-2000:]
    # a missing config is an error naming the task's shipped config, not a path inside the checkout
    bad = subprocess.run([str(venv / "bin" / "astbench-downstream"), "-u", "ssast_patch_mini", "-d", "folder",
                          "--data-root", str(work), "-c", "configs/downstream/nope.yaml"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and site in bad.stderr and REPO.as_posix() not in bad.stderr, bad.stderr
