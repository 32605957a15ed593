"""Packaging: the folder layout never shadows the standard library, from any entry point."""

from __future__ import annotations

import operator
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import loraplex

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
PROBE = (
    "import operator, loraplex.operator, loraplex.router, loraplex.worker;"
    "print(operator.__file__); print(loraplex.operator.__file__)"
)


def _assert_stdlib(path: str) -> None:
    assert Path(path).resolve().parent == STDLIB, f"operator came from {path}, not the stdlib"


def test_import_operator_in_test_run_is_stdlib() -> None:
    _assert_stdlib(operator.__file__)
    assert hasattr(operator, "itemgetter")


def test_subpackages_map_to_top_level_folders() -> None:
    import loraplex.operator
    import loraplex.router
    import loraplex.worker

    for module, folder in [
        (loraplex.operator, "operator"),
        (loraplex.router, "router"),
        (loraplex.worker, "worker"),
    ]:
        assert Path(module.__file__).resolve().parent == REPO / folder
    assert Path(loraplex.__file__).resolve().parent == REPO / "loraplex"


def test_subprocess_from_repo_root_gets_stdlib_operator() -> None:
    """`python -c` puts the cwd first on sys.path: operator must still be the stdlib's."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    _assert_stdlib(out[0])
    assert Path(out[1]).resolve().parent == REPO / "operator"


def test_top_level_folders_are_not_importable_by_their_own_names(tmp_path: Path) -> None:
    """The editable install maps subpackages; it must not put the repo root on sys.path."""
    code = "import importlib.util as u; print(u.find_spec('router'), u.find_spec('worker'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "None None"


def test_console_script_version_and_stdlib_operator() -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": ""}
    version = subprocess.run(
        [str(bin_dir / "loraplex"), "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert version.strip() == f"loraplex {loraplex.__version__}"
    module = subprocess.run(
        [sys.executable, "-m", "loraplex", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert module.strip() == version.strip()


def test_unknown_subcommand_fails_with_usage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loraplex", "no-such-thing"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
