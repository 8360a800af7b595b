"""Static checks of prefect.yaml and its Docker variant prefect.docker.yaml (no server).

What the server makes of prefect.yaml is checked by tests/test_deployment_e2e.py;
here: the deployments' shape, the free API plan's quota arithmetic for the
active schedules, a pull step a worker can use, and that the Docker variant
stays the same deployments as prefect.yaml, in the Dockerfile's directory.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.source import expand_regions

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "prefect.yaml"
DOCKER_YAML = REPO_ROOT / "prefect.docker.yaml"
ENTRYPOINT = "flows/countries.py:countries_flow"

# The free REST Countries plan: 500 requests a month. Budgeted for the longest
# month (31 days), in which a schedule fires the most often.
FREE_PLAN_REQUESTS_PER_MONTH = 500
LONGEST_MONTH_SECONDS = 31 * 24 * 3600
# Every region and subregion has at most 100 countries (Africa, the largest, ~59),
# so each costs one page (v5: limit=100; v3.1: one list per call).
PAGES_PER_REGION = 1


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def by_name(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in config["deployments"]}


def requests_per_run(deployment: dict[str, Any]) -> int:
    regions = deployment.get("parameters", {}).get("regions", ["Northern Europe"])
    return len(expand_regions(regions)) * PAGES_PER_REGION


def runs_per_month(interval_seconds: float) -> int:
    return math.ceil(LONGEST_MONTH_SECONDS / interval_seconds)


def flow_parameters() -> list[str]:
    """The parameter names of countries_flow, read from its source (nothing imported or run)."""
    path, func = ENTRYPOINT.split(":")
    tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
            args = node.args
            return [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    raise AssertionError(f"{path} defines no function {func}")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load(PREFECT_YAML)


@pytest.fixture(scope="module")
def docker_config() -> dict[str, Any]:
    return load(DOCKER_YAML)


def test_the_table_follows_the_regions(config):
    for d in config["deployments"]:
        assert d["entrypoint"] == ENTRYPOINT
        # The table follows the regions, in a custom run too: a run of this deployment with other
        # regions must not replace the rows of the table its description names.
        assert "table" not in d["parameters"], d["name"]


@pytest.mark.parametrize("config_name", ["config", "docker_config"])
def test_each_deployment_loads_the_table_its_description_names(config_name, request):
    from flows.parameters import default_table

    for d in request.getfixturevalue(config_name)["deployments"]:
        table = default_table(d["parameters"]["regions"])
        assert re.search(rf"into table {table}\b", d["description"]), (d["name"], table)


def test_parameters_are_parameters_of_the_flow(config, docker_config):
    known = set(flow_parameters())
    for cfg in (config, docker_config):
        for d in cfg["deployments"]:
            assert set(d.get("parameters", {})) <= known, (d["name"], set(d["parameters"]) - known)


def test_schedules_state_whether_they_are_active(config):
    for d in config["deployments"]:
        for s in d["schedules"]:
            assert set(s) <= {"interval", "anchor_date", "timezone", "active"}, s
            assert isinstance(s["active"], bool), "state `active` explicitly: a deploy resets it to this"


@pytest.mark.parametrize("path", [PREFECT_YAML, DOCKER_YAML], ids=lambda p: p.name)
def test_deployment_runs_send_a_heartbeat_every_30_seconds(path):
    """Issue 10: runs send heartbeats so that a dead run is marked Crashed within 90 s (3 missed heartbeats).

    `prefect deploy` reads job variables only under a deployment's `work_pool:`.
    """
    for d in load(path)["deployments"]:
        env = d["work_pool"].get("job_variables", {}).get("env", {})
        assert env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") == "30", d["name"]
        assert "job_variables" not in d, f"{d['name']}: job_variables outside work_pool are ignored by deploy"


@pytest.mark.parametrize("path", [PREFECT_YAML, DOCKER_YAML], ids=lambda p: p.name)
def test_active_schedules_fit_the_free_api_plan(path):
    """What is switched on by default must stay within 500 requests a month, with headroom."""
    total = 0
    for d in load(path)["deployments"]:
        for s in d.get("schedules", []):
            if s.get("active", True):
                total += requests_per_run(d) * runs_per_month(s["interval"])
    assert total <= 0.8 * FREE_PLAN_REQUESTS_PER_MONTH, "keep room for retries and manual runs"


def test_pull_steps_never_use_a_relative_directory(config, docker_config):
    """A process worker starts each flow run in a new temporary directory: a relative path crashes."""
    # prefect.yaml has no pull section: `prefect deploy` records its own absolute working directory.
    assert "pull" not in config
    for step in docker_config["pull"]:
        for _name, inputs in step.items():
            directory = inputs["directory"]
            assert directory.startswith("/") or directory.startswith("{{"), directory


def dockerfile_workdir() -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)\s*$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M)
    assert workdirs, "the Dockerfile sets a WORKDIR"
    return workdirs[-1]


def test_docker_variant_is_the_same_deployments(config, docker_config):
    """prefect.docker.yaml differs from prefect.yaml only in its work pool and the image steps."""
    process, docker = by_name(config), by_name(docker_config)
    assert set(docker) == set(process)
    same = ("entrypoint", "parameters", "schedules", "concurrency_limit", "tags")
    for name in process:
        for key in same:
            assert docker[name].get(key) == process[name].get(key), (name, key)
        assert docker[name]["work_pool"]["name"] == "countries-docker-pool"
        docker_variables = docker[name]["work_pool"]["job_variables"]
        assert docker_variables["image"] == "{{ build-image.image }}"
        assert docker_variables["env"] == process[name]["work_pool"]["job_variables"]["env"], name


def test_docker_variant_builds_the_dockerfile_and_runs_in_its_workdir(docker_config):
    (build,) = docker_config["build"]
    (push,) = docker_config["push"]
    build_step = build["prefect_docker.deployments.steps.build_docker_image"]
    push_step = push["prefect_docker.deployments.steps.push_docker_image"]
    assert build_step["dockerfile"] == "Dockerfile"
    for step in (build_step, push_step):
        assert re.fullmatch(r"prefect-docker==[\d.]+", step["requires"]), "pin the step's package"
    (pull,) = docker_config["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == dockerfile_workdir()
