"""The container images, checked without a Docker engine (there is none in CI).

What can be checked from the Dockerfiles and the source: the final stage runs as the non-root
UID the Helm chart expects; the extras they install exist in pyproject.toml; the entry point
and subcommands they (and the chart) run exist in ``loraplex.cli.SUBCOMMANDS``; every folder
and file the install needs (requirements.lock included) is copied; the install is the lock's
(hashes required, uv at the lock's version, the project itself without dependencies; in the
worker CUDA torch of the lock's version first, then the rest without torch); and every
third-party module reachable by import from the subcommands an image runs is provided by the
distributions that image installs — so the slim control-plane image cannot silently need
torch. What is not checked here: that the images build and start (that needs Docker and, for
the worker, a GPU; docs/install.md "Container images" has the build commands and how their
RUN lines were replayed without Docker).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from loraplex.cli import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "deploy" / "docker"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load((REPO / "charts/loraplex/values.yaml").read_text())
LOCK = REPO / "requirements.lock"
LOCK_TEXT = LOCK.read_text()
LOCKED = {
    canonicalize_name(m[1]): m[2]
    for m in re.finditer(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", LOCK_TEXT)
}


class Instruction(NamedTuple):
    keyword: str
    args: str


class Image(NamedTuple):
    dockerfile: str
    extras: frozenset[str]
    subcommands: tuple[str, ...]  # what the chart or the operator runs in it


IMAGES = [
    Image("worker.Dockerfile", frozenset({"worker"}), ("worker",)),
    Image("control-plane.Dockerfile", frozenset({"router", "operator"}), ("router", "operator")),
]


def parse(dockerfile: str) -> list[list[Instruction]]:
    """Instructions of each build stage (continuation lines joined, comments dropped)."""
    text = (DOCKER / dockerfile).read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: list[list[Instruction]] = [[]]
    for line in filter(str.strip, joined.splitlines()):
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def final_stage(dockerfile: str) -> list[Instruction]:
    return parse(dockerfile)[-1]


def values_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def build_runs(dockerfile: str) -> list[str]:
    """The build stage's RUN lines."""
    return values_of(parse(dockerfile)[1], "RUN")


def uv_installs(dockerfile: str) -> list[str]:
    """Every ``uv pip install …`` command of the build stage, in order."""
    return [
        cmd.strip()
        for run in build_runs(dockerfile)
        for cmd in run.split("&&")
        if cmd.strip().startswith("uv pip install")
    ]


def installed_extras(dockerfile: str) -> set[str]:
    """Extras whose dependencies ``uv pip install … -r pyproject.toml --extra X`` installs."""
    found = set()
    for cmd in uv_installs(dockerfile):
        if "-r pyproject.toml" in cmd:
            found.update(re.findall(r"--extra ([a-z]+)", cmd))
    return found


def arg_default(dockerfile: str, name: str) -> str:
    args = [i.args for stage in parse(dockerfile) for i in stage if i.keyword == "ARG"]
    (value,) = [a.partition("=")[2] for a in args if a.partition("=")[0] == name]
    return value


@pytest.mark.parametrize("image", IMAGES, ids=[i.dockerfile for i in IMAGES])
def test_runs_as_the_non_root_uid_the_chart_expects(image: Image) -> None:
    (user,) = values_of(final_stage(image.dockerfile), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user} must be a numeric non-root UID"
    assert int(uid) == CHART_VALUES["podSecurityContext"]["runAsUser"]
    assert int(gid) == CHART_VALUES["podSecurityContext"]["runAsGroup"]


@pytest.mark.parametrize("image", IMAGES, ids=[i.dockerfile for i in IMAGES])
def test_installs_extras_that_exist(image: Image) -> None:
    extras = installed_extras(image.dockerfile)
    assert extras == image.extras
    assert extras <= PYPROJECT["project"]["optional-dependencies"].keys()


@pytest.mark.parametrize("image", IMAGES, ids=[i.dockerfile for i in IMAGES])
def test_entrypoint_and_subcommands_exist(image: Image) -> None:
    stage = final_stage(image.dockerfile)
    (entrypoint,) = values_of(stage, "ENTRYPOINT")
    (cmd,) = values_of(stage, "CMD")
    assert json.loads(entrypoint) == ["loraplex"]
    assert PYPROJECT["project"]["scripts"]["loraplex"] == "loraplex.cli:main"
    assert json.loads(cmd)[0] in image.subcommands
    for subcommand in image.subcommands:
        assert subcommand in SUBCOMMANDS
        module = SUBCOMMANDS[subcommand].module
        assert module_file(module) is not None, f"{module} does not exist yet"


@pytest.mark.parametrize("image", IMAGES, ids=[i.dockerfile for i in IMAGES])
def test_copies_everything_pip_install_needs(image: Image) -> None:
    copied = set()
    for args in values_of(parse(image.dockerfile)[1], "COPY"):
        *sources, _dest = args.split()
        copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "requirements.lock"}
    needed |= {d.split("/")[0] for d in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied
    assert all((REPO / path).exists() for path in copied)
    ignore = (DOCKER / f"{image.dockerfile}.dockerignore").read_text().splitlines()
    assert {f"!{p}/" if (REPO / p).is_dir() else f"!{p}" for p in needed} <= set(ignore)


def test_worker_image_is_cuda_runtime_with_cuda_torch_and_a_cache_volume() -> None:
    stages = parse("worker.Dockerfile")
    base = re.search(r"CUDA_RUNTIME_IMAGE=(\S+)", stages[0][0].args)
    assert base and re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base[1])
    index = re.search(r"TORCH_INDEX_URL=(\S+)", " ".join(values_of(stages[1], "ARG")))
    assert index and re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index[1])
    final = stages[-1]
    env = " ".join(values_of(final, "ENV"))
    hf_home = re.search(r"HF_HOME=(\S+)", env)
    (volume,) = json.loads(values_of(final, "VOLUME")[0])
    assert hf_home and Path(hf_home[1]).is_relative_to(volume)
    assert "LORAPLEX_WORKER_PORT=8000" in env


def test_worker_image_matches_the_pods_the_operator_builds() -> None:
    """The cache volume, HF_HOME, port and command the operator gives worker pods are the
    ones the image is built for (so `docker run` and the cluster behave alike)."""
    from loraplex.operator import resources

    body = {"metadata": {"name": "p"}, "spec": {"baseModel": "org/base"}}
    deployment = resources.build_deployment(resources.parse_pool(body, "img"), replicas=1)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    final = final_stage("worker.Dockerfile")
    env = " ".join(values_of(final, "ENV"))
    pod_env = {e["name"]: e.get("value") for e in container["env"]}
    assert f"HF_HOME={pod_env['HF_HOME']}" in env
    assert json.loads(values_of(final, "VOLUME")[0]) == [
        m["mountPath"] for m in container["volumeMounts"] if m["name"] == "model-cache"
    ]
    assert f"LORAPLEX_WORKER_PORT={container['ports'][0]['containerPort']}" in env
    entrypoint = json.loads(values_of(final, "ENTRYPOINT")[0])
    command = container.get("command") or [*entrypoint, *json.loads(values_of(final, "CMD")[0])]
    assert command[: len(entrypoint)] == entrypoint and command[len(entrypoint)] == "worker"


def test_control_plane_image_is_slim_and_matches_the_chart() -> None:
    stages = parse("control-plane.Dockerfile")
    assert re.search(r"PYTHON_IMAGE=python:3\.1[1-9]-slim", stages[0][0].args)
    env = " ".join(values_of(stages[-1], "ENV"))
    assert f"LORAPLEX_ROUTER_PORT={CHART_VALUES['router']['port']}" in env
    # the build fails if torch is importable (python -P: the copied operator/ folder in the
    # working directory would otherwise shadow the stdlib's and break every import check)
    runs = " ".join(values_of(stages[1], "RUN"))
    assert '! python -P -c "import torch" 2>/dev/null' in runs


# --- the locked install -------------------------------------------------------------------


def test_control_plane_installs_only_locked_packages_and_no_torch() -> None:
    """Dependencies from the lock with hashes required (a package the lock lacks, or a wheel
    whose hash differs, fails the build), then the project alone; nothing names torch."""
    deps, project = uv_installs("control-plane.Dockerfile")
    assert "--require-hashes" in deps and "--constraint requirements.lock" in deps
    assert "-r pyproject.toml" in deps
    assert project.split()[-1] == "." and "--no-deps" in project
    assert "--build-constraint requirements.lock" in project
    assert "torch" not in " ".join(uv_installs("control-plane.Dockerfile"))
    # the lock is resolved for one Python; the image runs that one
    lock_python = re.search(r"--python-version (\d+\.\d+)", LOCK_TEXT)
    base = parse("control-plane.Dockerfile")[0][0].args
    image = re.search(r"PYTHON_IMAGE=python:(\d+\.\d+)-slim", base)
    assert lock_python and image and image[1] == lock_python[1]


def test_worker_installs_cuda_torch_first_then_the_lock_without_torch() -> None:
    torch, deps, project = uv_installs("worker.Dockerfile")
    runs = build_runs("worker.Dockerfile")
    torch_at = next(n for n, r in enumerate(runs) if torch in r)
    deps_at = next(n for n, r in enumerate(runs) if deps in r)
    assert torch_at < deps_at, "CUDA torch must be installed before the rest of the lock"
    assert torch == 'uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"'
    # the lock's torch version (its CPU build there) and the pins file's
    assert LOCKED["torch"].split("+")[0] == arg_default("worker.Dockerfile", "TORCH_VERSION")
    pins = (REPO / "requirements-pins.txt").read_text()
    assert f"torch=={arg_default('worker.Dockerfile', 'TORCH_VERSION')}" in pins.split()
    assert "--require-hashes" in deps and "--constraint lock-without-torch.txt" in deps
    assert "--excludes torch.txt" in deps and "-r torch-deps.txt" in deps
    assert project.split()[-1] == "." and "--no-deps" in project
    assert "--build-constraint lock-without-torch.txt" in project


@pytest.mark.skipif(shutil.which("awk") is None, reason="needs awk (the image's own tool)")
def test_worker_lock_filters_drop_only_torch_and_find_its_dependencies(tmp_path) -> None:
    """The image's own awk lines, run on the real lock: the lock without torch is the lock
    minus torch's entry, and "torch's dependencies" are exactly what the lock pins for it."""
    (run,) = [r for r in build_runs("worker.Dockerfile") if "lock-without-torch.txt" in r]
    filters = [c.strip() for c in run.split("&&") if c.strip().startswith(("awk", "test"))]
    shutil.copy(LOCK, tmp_path / "requirements.lock")
    subprocess.run(["sh", "-c", " && ".join(filters)], cwd=tmp_path, check=True)
    without = (tmp_path / "lock-without-torch.txt").read_text()
    assert not re.search(r"(?m)^torch==", without)
    assert {k for k in LOCKED if k != "torch"} == {
        canonicalize_name(m[1]) for m in re.finditer(r"(?m)^([A-Za-z0-9][\w.-]*)==", without)
    }
    torch_deps = (tmp_path / "torch-deps.txt").read_text().split()
    assert all(LOCKED[canonicalize_name(p.split("==")[0])] == p.split("==")[1] for p in torch_deps)
    wanted = {
        canonicalize_name(Requirement(r).name)
        for r in importlib.metadata.requires("torch") or []
        if Requirement(r).marker is None or Requirement(r).marker.evaluate({"extra": ""})
    }
    assert {canonicalize_name(p.split("==")[0]) for p in torch_deps} == wanted & LOCKED.keys()


@pytest.mark.parametrize("image", IMAGES, ids=[i.dockerfile for i in IMAGES])
def test_uv_is_bootstrapped_at_the_locked_version(image: Image) -> None:
    version = arg_default(image.dockerfile, "UV_VERSION")
    assert version == LOCKED["uv"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(rf"(?m)^UV_VERSION\s*:=\s*{re.escape(version)}$", makefile)
    assert '"uv==${UV_VERSION}"' in " ".join(build_runs(image.dockerfile))


# --- import closure ----------------------------------------------------------------------


PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]


def module_file(name: str) -> Path | None:
    """Source file of a loraplex module, found through pyproject's package-dir mapping without
    importing anything (importing would run torch's import for the worker modules)."""
    package = max((p for p in PACKAGE_DIRS if name == p or name.startswith(p + ".")), key=len)
    rest = name[len(package) :].lstrip(".").split(".") if name != package else []
    base = REPO / PACKAGE_DIRS[package] / Path(*rest) if rest else REPO / PACKAGE_DIRS[package]
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # "from module import name": the name is not a module


def imports_of(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def third_party_imports(entry_modules: list[str]) -> set[str]:
    """Top-level third-party modules imported (anywhere, lazily too) by the loraplex modules
    reachable from ``entry_modules``."""
    seen: set[str] = set()
    todo = list(entry_modules)
    external: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue  # "from pkg import function": not a module
        for imported in imports_of(name, path):
            top = imported.split(".")[0]
            if top == "loraplex":
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
    return external


def provided_distributions(extras: frozenset[str]) -> set[str]:
    """Distributions installed by ``pip install .[extras]``: declared ones and their deps."""
    project = PYPROJECT["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    todo = [Requirement(r) for r in reqs]
    provided: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in provided:
            continue
        provided.add(name)
        for sub in importlib.metadata.requires(req.name) or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or sub_req.marker.evaluate({"extra": ""}):
                todo.append(sub_req)
    return provided


@pytest.mark.parametrize("image", IMAGES, ids=[i.dockerfile for i in IMAGES])
def test_image_provides_every_module_its_subcommands_import(image: Image) -> None:
    entries = ["loraplex.cli", *(SUBCOMMANDS[s].module for s in image.subcommands)]
    distributions = importlib.metadata.packages_distributions()
    provided = provided_distributions(image.extras)
    missing = {}
    for module in third_party_imports(entries):
        dists = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not dists & provided:
            missing[module] = dists or "no installed distribution"

    assert not missing, f"{image.dockerfile}: not installed by {set(image.extras)}: {missing}"


def test_closure_check_can_fail() -> None:
    """The closure finds the worker's torch import, which the control plane must not need."""
    worker_modules = third_party_imports(["loraplex.worker.cli"])
    assert "torch" in worker_modules
    assert "torch" not in provided_distributions(frozenset({"router", "operator"}))


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\\n", " "))


def test_install_docs_show_the_images_own_install_lines() -> None:
    """docs/install.md's GPU install runs the worker image's lines (files under /tmp there)
    and shows the control plane's RUN line as it is, so the docs cannot drift from the builds."""
    docs = _flat((REPO / "docs" / "install.md").read_text())
    (worker_run,) = [r for r in build_runs("worker.Dockerfile") if "lock-without-torch" in r]
    commands = [_flat(c).strip() for c in worker_run.split("&&")]
    shown = [c for c in commands if c.startswith(("awk", "echo", "uv pip"))]
    assert len(shown) == 6
    for command in shown:
        as_in_docs = re.sub(
            r"(?<=[ >])(lock-without-torch|torch-deps|torch)\.txt", r"/tmp/\1.txt", command
        )
        assert as_in_docs in docs, f"docs/install.md lacks: {as_in_docs}"
    (cp_run,) = [r for r in build_runs("control-plane.Dockerfile") if "--require-hashes" in r]
    assert f"RUN {_flat(cp_run)}" in docs
