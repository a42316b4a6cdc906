"""An installed wheel runs every subcommand end to end, from a folder outside the checkout.

The wheel is built from the repository, installed with ``--no-deps`` into a fresh venv whose only
extra path is the dependencies' site-packages of the running interpreter (added as a plain path,
so the editable install's finder is not active), and each ``vlminterp`` subcommand runs with the
smallest options from an empty temp folder. Slow (about two minutes): ``make test-wheel``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, workdir)``: a venv with the built wheel, and an empty folder outside the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source, dist, venv, work = root / "source", root / "dist", root / "venv", root / "work"
    work.mkdir()
    # Build from a copy of the tracked files: setuptools writes build/ next to the sources.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True)
    for name in tracked.stdout.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)], check=True
    )
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("vlminterp-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)], check=True
    )
    return python, work


def _run(installed, *argv: str) -> str:
    python, work = installed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    done = subprocess.run(
        [str(python), "-m", "vlminterp", *argv],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (
        f"vlminterp {' '.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    python, work = installed
    where = subprocess.run(
        [str(python), "-c", "import vlminterp; print(vlminterp.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(REPO) not in where and "site-packages" in where


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--out", "demo", "--no-progress"],
        ["doctor", "--families", "llava"],
        ["collect", "--model", "tiny", "--limit", "2", "--no-progress", "--out", "collect"],
        ["gap", "--model", "tiny:llava", "--limit", "2", "--n-splits", "2", "--out", "gap"],
        ["steer", "cmrm", "--model", "organism", "--eval", "organism:test", "--judge", "organism", "--limit", "4",
         "--anchor", "organism:train", "--alpha", "0.5", "--max-new-tokens", "10", "--no-progress", "--out", "cmrm"],
        ["steer", "shiftdc", "--model", "organism", "--eval", "organism:test", "--judge", "organism", "--limit", "4",
         "--direction", "fit:organism:train", "--caption-source", "sample", "--max-new-tokens", "10",
         "--no-progress", "--out", "shiftdc"],
        ["sweep", "--study", "layer", "--model", "tiny", "--n-harmful", "2", "--n-benign", "2", "--window", "2",
         "--no-progress", "--out", "layer"],
        ["sweep", "--study", "head", "--model", "tiny", "--n-harmful", "2", "--n-benign", "2", "--top-k", "2",
         "--no-progress", "--out", "head"],
        ["sweep", "--study", "alpha-layer", "--model", "tiny", "--n-harmful", "2", "--n-benign", "2",
         "--alphas", "0,1", "--no-progress", "--out", "alpha"],
    ],
    ids=lambda argv: "-".join(argv[:2]) if argv[0] in ("steer", "sweep") else argv[0],
)  # fmt: skip
def test_subcommand_runs_from_the_installed_wheel(installed, argv):
    _run(installed, *argv)


def test_eval_runs_from_the_installed_wheel(installed):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no benchmark copies at {SHARED_DATA}")
    _run(
        installed,
        "eval", "--model", "tiny:llava", "--dataset", "jailbreakllms", "--root", str(SHARED_DATA / "jailbreak_llms"),
        "--out", "eval", "--condition", "text_only", "--limit", "3", "--max-new-tokens", "2",
        "--judge", "keyword:gcg", "--judges-dir", str(SHARED_DATA / "judges"),
    )  # fmt: skip


@pytest.mark.parametrize("paper", ["cmrm", "shiftdc"])
def test_reproduce_runs_from_the_installed_wheel(installed, paper):
    """Its own --out: `steer cmrm --out cmrm` above left a run of other settings there, which reproduce refuses."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no benchmark copies at {SHARED_DATA}")
    small = ["--alphas", "1", "--anchor-limit", "2"] if paper == "cmrm" else ["--direction-limit", "2"]
    _run(
        installed,
        "reproduce", paper, "--model", "organism", "--data-root", str(SHARED_DATA), "--out", f"reproduce-{paper}",
        "--limit", "2", "--max-new-tokens", "4", "--no-progress", *small,
    )  # fmt: skip
