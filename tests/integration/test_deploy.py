"""Deployment files: the Grafana dashboard, docker-compose.yml, KubeRay manifests, Dockerfile and
Prometheus configs agree with each other and with the metrics distdrq exports.

`docker-compose config` and `promtool check config` run when Debian's `docker-compose` and
`prometheus` packages are installed; otherwise those two checks are skipped.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "distdrq.json"
IMAGE = "distdrq:latest"
METRIC = re.compile(r"distdrq_[a-z0-9_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def exported_metrics() -> set[str]:
    """Base metric names listed in deploy/metrics.txt (comments and blank lines skipped)."""
    lines = (DEPLOY / "metrics.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def dashboard_queries(node: Any) -> list[str]:
    """Every PromQL string of the dashboard: panel targets and template-variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(dashboard_queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_queries(item))
    return found


def queried_metrics() -> set[str]:
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    return {HISTOGRAM_SUFFIX.sub("", name) for q in queries for name in METRIC.findall(q)}


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Containers of the head group and every worker group of a RayCluster spec."""
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ---------------------------------------------------------------------------------------------
# Grafana


def test_metrics_list_is_well_formed():
    names = exported_metrics()
    assert names, "deploy/metrics.txt lists no metrics"
    for name in names:
        assert METRIC.fullmatch(name), f"not a distdrq metric name: {name!r}"
        assert not HISTOGRAM_SUFFIX.search(name), f"list the histogram's base name: {name}"


def test_dashboard_queries_only_exported_metrics():
    queried = queried_metrics()
    unknown = queried - exported_metrics()
    assert not unknown, f"the dashboard queries metrics distdrq does not export: {sorted(unknown)}"
    # the panels users watch
    watched = {
        "distdrq_env_frames_per_second",
        "distdrq_train_return",
        "distdrq_eval_return",
        "distdrq_learner_critic_loss",
        "distdrq_learner_actor_loss",
        "distdrq_replay_transitions",
        "distdrq_replay_compression_ratio",
        "distdrq_replay_sample_latency_seconds",
        "distdrq_rate_limiter_samples_per_insert",
        "distdrq_policy_lag",
        "distdrq_actor_restarts_total",
        "distdrq_learner_updates_per_second",
    }
    assert watched <= queried, f"dashboard misses panels for {sorted(watched - queried)}"


def test_dashboard_uses_the_provisioned_datasource():
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {
        p["datasource"]["uid"] for p in dashboard["panels"] if isinstance(p.get("datasource"), dict)
    }
    assert uids == {source["uid"]}
    providers = yaml.safe_load((provisioning / "dashboards" / "distdrq.yml").read_text())
    (provider,) = providers["providers"]
    grafana_mounts = load_compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana_mounts


# ---------------------------------------------------------------------------------------------
# docker-compose


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (Debian: apt-get install docker-compose)")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_compose_services():
    services = load_compose()["services"]
    assert {"ray-head", "ray-worker", "trainer", "prometheus", "grafana"} <= set(services)
    head, worker, trainer = services["ray-head"], services["ray-worker"], services["trainer"]
    for name in ("ray-head", "ray-worker", "trainer"):
        service = services[name]
        assert service["image"] == IMAGE
        assert service["environment"]["RAY_AUTH_MODE"] == "disabled"
    assert head["build"]["dockerfile"] == "deploy/Dockerfile"
    # Ray's object store lives in /dev/shm
    assert head["shm_size"] and worker["shm_size"]
    devices = head["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert worker["deploy"]["replicas"] >= 1
    assert "--head" in head["command"] and "--address=ray-head:6379" in worker["command"]
    driver = " ".join([*trainer["entrypoint"], *trainer["command"]])
    assert "exec distdrq" in driver and trainer["command"][0] == "launch"
    assert "--metrics-host 0.0.0.0" in driver and "--address ray-head:6379" in driver
    # Prometheus reads the config and Ray's service-discovery file from the head's /tmp/ray
    prometheus_mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus_mounts
    ray_tmp = [v for v in head["volumes"] if v.endswith(":/tmp/ray")]
    assert ray_tmp and f"{ray_tmp[0]}:ro" in prometheus_mounts
    grafana_mounts = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_mounts


# ---------------------------------------------------------------------------------------------
# Dockerfile and KubeRay


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = (line.strip() for line in text.splitlines())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_installs_the_console_script():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    (entrypoint,) = [arg for op, arg in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["distdrq"]
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the Dockerfile does not install distdrq"
    for package in ("libegl1", "libegl-mesa0", "libgl1", "libgles2"):
        assert package in runs
    envs = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "MUJOCO_GL=egl" in envs
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "distdrq" in scripts


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name):
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]
    (ray,) = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    if name == "raycluster.yaml":
        assert ray["kind"] == "RayCluster"
        spec = ray["spec"]
    else:
        assert ray["kind"] == "RayJob"
        # the console script deploy/Dockerfile installs
        argv = shlex.split(ray["spec"]["entrypoint"])
        assert argv[:2] == ["distdrq", "launch"], ray["spec"]["entrypoint"]
        assert "--actors" in argv
        spec = ray["spec"]["rayClusterSpec"]
    containers = k8s_containers(spec)
    assert containers and {c["image"] for c in containers} == {IMAGE}
    head = spec["headGroupSpec"]["template"]["spec"]
    assert str(head["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        shm = {v["name"]: v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium")}
        assert any(v["emptyDir"]["medium"] == "Memory" for v in shm.values())
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert mounts.get("/dev/shm") in shm


# ---------------------------------------------------------------------------------------------
# Prometheus


@pytest.mark.parametrize(
    ("name", "target"),
    [("prometheus.yml", "trainer:9464"), ("prometheus-local.yml", "127.0.0.1:9464")],
)
def test_prometheus_config(name, target):
    config = yaml.safe_load((DEPLOY / name).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["distdrq"]["static_configs"] for t in sc["targets"]]
    assert targets == [target]
    if name == "prometheus-local.yml":
        assert config["global"]["scrape_interval"] == "1s"
    else:
        files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
        assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


def _serves_metrics(command: str) -> bool:
    from distdrq.cli import _build_parser

    sub = next(a for a in _build_parser()._actions if a.dest == "command").choices[command]
    return any("--metrics-port" in action.option_strings for action in sub._actions)


def test_local_prometheus_names_only_commands_that_serve_metrics():
    comments = [x for x in (DEPLOY / "prometheus-local.yml").read_text().splitlines() if "#" in x]
    paragraphs = (DEPLOY / "README.md").read_text().split("\n\n")
    text = "\n".join(comments + [p for p in paragraphs if "prometheus-local.yml" in p])
    named = set(re.findall(r"distdrq (train|launch)", text))
    assert "launch" in named and all(_serves_metrics(c) for c in named), named


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-local.yml"])
def test_promtool_checks_config(name):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_dashboard_queries(tmp_path):
    """Every dashboard query is valid PromQL (checked as recording rules, `$run` filled in)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    exprs = [q.replace("$run", ".*") for q in queries if not q.startswith("label_values(")]
    rules = [{"record": f"distdrq:dashboard_query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
