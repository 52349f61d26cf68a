"""The Dockerfile (hadolint, non-root, health check) and deploy/compose.yaml (docker is not run)."""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import PurePosixPath
from typing import Any

import yaml
from yarl import URL

from gateway.policy.loader import load_policy
from tests.deploy_tools import (
    DEPLOY,
    DOCKERFILE,
    ROOT,
    instructions,
    only,
    run,
    serve_settings,
    tool,
)

COMPOSE = DEPLOY / "compose.yaml"


def image_command() -> list[str]:
    return [*json.loads(only("ENTRYPOINT")), *json.loads(only("CMD"))]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY."""
    result = []
    for instruction, args in instructions():
        if instruction == "COPY":
            *sources, destination = shlex.split(args)
            result.append((sources, destination))
    return result


def image_path(path: str) -> PurePosixPath:
    """The repository file a path inside the image was copied from."""
    target = PurePosixPath(path)
    for sources, destination in copies():
        for source in sources:
            into = PurePosixPath(destination)
            if destination.endswith("/") and not (ROOT / source).is_dir():
                into = into / source
            if target == into or into in target.parents:
                return PurePosixPath(source) / target.relative_to(into)
    raise AssertionError(f"{path} is not copied into the image")


def test_dockerfile_is_clean_under_hadolint() -> None:
    assert run([tool("hadolint"), "--no-color", str(DOCKERFILE)]) == ""


def test_image_is_slim_runs_as_a_numeric_non_root_user_and_checks_its_health() -> None:
    assert "slim" in only("FROM")
    user = only("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric, so runAsNonRoot can verify it
    settings = serve_settings(image_command()[2:])
    health = only("HEALTHCHECK")
    assert f"http://127.0.0.1:{settings.admin_listen.port}/healthz" in health
    assert str(settings.admin_listen.port) in only("EXPOSE").split()
    assert str(settings.listen.port) in only("EXPOSE").split()


def test_image_command_serves_a_policy_the_image_holds() -> None:
    command = image_command()
    assert command[:2] == ["gateway", "serve"]
    settings = serve_settings(command[2:])
    assert settings.listen.host == "0.0.0.0"  # reachable from outside the container
    policy = load_policy(ROOT / image_path(settings.policy))
    assert policy.name == "agentstack"


def test_build_context_holds_the_package_and_the_dockerignore_keeps_it() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [source for sources, _ in copies() for source in sources]
    for source in sources:
        assert (ROOT / source).exists(), source
        hit = [pattern for pattern in ignored if fnmatch.fnmatch(source, pattern)]
        assert not hit, f"{source} is copied into the image but .dockerignore drops it"
    # what the package build reads: its metadata, its readme and the package itself
    assert {"pyproject.toml", "README.md", "gateway", "policies", "config"} <= set(sources)
    # the package links to policies/ and config/: the build must have what they point at
    for link in (ROOT / "gateway").iterdir():
        if link.is_symlink():
            assert link.resolve().relative_to(ROOT).parts[0] in sources, link
    assert "tests" in ignored and ".venv" in ignored and ".git" in ignored


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: path inside the container -> path on the host (from deploy/)."""
    result = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            result[target] = source
    return result


def host_path(service: dict[str, Any], path: str) -> PurePosixPath:
    target = PurePosixPath(path)
    for inside, source in mounts(service).items():
        if target == PurePosixPath(inside) or PurePosixPath(inside) in target.parents:
            return PurePosixPath(source) / target.relative_to(inside)
    raise AssertionError(f"{path} is not mounted")


def test_compose_runs_the_five_services_and_builds_from_this_repository() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "redis", "upstream", "prometheus", "grafana"}
    for name in ("gateway", "upstream"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for name, service in services.items():
        for source in mounts(service).values():
            assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


def test_compose_gateway_runs_on_redis_in_front_of_the_demo_upstream() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    settings = serve_settings(gateway["command"][1:])
    assert gateway["command"][0] == "serve"
    assert URL(settings.store).host == "redis"
    assert "redis" in gateway["depends_on"]
    upstream_command = services["upstream"]["command"]
    assert upstream_command[:2] == ["demo-upstream", "--listen"]
    (_, url), *_ = settings.upstreams
    assert url.host == "upstream"
    assert f":{url.port}" == upstream_command[2]
    policy = load_policy(DEPLOY / host_path(gateway, settings.policy))
    assert policy.name == "agentstack"
    published = {port.rsplit(":", 1)[-1] for port in gateway["ports"]}
    assert {str(settings.listen.port), str(settings.admin_listen.port)} == published


def test_compose_prometheus_scrapes_the_gateway_and_loads_the_alerts() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_file = next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    config_path = DEPLOY / host_path(prometheus, config_file)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    for rules in config["rule_files"]:
        inside = PurePosixPath(config_file).parent / rules
        assert (DEPLOY / host_path(prometheus, str(inside))).is_file()
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "gateway"]
    admin_port = serve_settings(services["gateway"]["command"][1:]).admin_listen.port
    assert job["static_configs"][0]["targets"] == [f"gateway:{admin_port}"]


def test_compose_grafana_provisions_the_data_source_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    provisioning = DEPLOY / host_path(grafana, "/etc/grafana/provisioning")
    provider = yaml.safe_load((provisioning / "dashboards" / "gateway.yaml").read_text())
    dashboards = DEPLOY / host_path(grafana, provider["providers"][0]["options"]["path"])
    assert (dashboards / "gateway.json").is_file()
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    url = URL(source["datasources"][0]["url"])
    assert url.host == "prometheus"
    assert url.port == 9090  # Prometheus's own port inside the compose network
