"""deploy/kubernetes: valid under kubernetes-validate, probes on the admin listener, non-root."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

from gateway.policy.loader import load_policy
from gateway.settings import Settings
from tests.deploy_tools import DEPLOY, ROOT, only, run, serve_settings, tool

KUBERNETES = DEPLOY / "kubernetes"


def manifest(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text(encoding="utf-8"))
    return loaded


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("deployment.yaml")["spec"]["template"]
    return spec


def container() -> dict[str, Any]:
    (found,) = pod()["spec"]["containers"]
    return dict(found)


def container_settings() -> Settings:
    # Kubernetes expands $(VAR) in args from the container's environment (here a Secret)
    store = "redis://redis:6379/0"
    args = [arg.replace("$(GATEWAY_STORE_URL)", store) for arg in container()["args"]]
    assert args[0] == "serve"
    return serve_settings(args[1:])


def test_every_manifest_is_valid_under_kubernetes_validate() -> None:
    files = sorted(str(path) for path in KUBERNETES.glob("*.yaml"))
    assert {Path(file).name for file in files} == {
        "configmap.yaml",
        "deployment.yaml",
        "pdb.yaml",
        "service.yaml",
    }
    output = run([tool("kubernetes-validate"), "--strict", *files])
    assert output.count("passed for resource") == len(files)


def test_probes_ask_the_admin_listener_readiness_and_liveness() -> None:
    spec = container()
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    settings = container_settings()
    assert ports == {"http": settings.listen.port, "admin": settings.admin_listen.port}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_pod_runs_as_the_image_s_non_root_user_on_a_read_only_root_with_resources() -> None:
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    pod_security = pod()["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert str(pod_security["runAsUser"]) == only("USER").split(":")[0]
    resources = container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_configmap_holds_the_shipped_policy_where_the_gateway_reads_it() -> None:
    data = manifest("configmap.yaml")["data"]
    shipped = (ROOT / "policies" / "agentstack.yaml").read_text(encoding="utf-8")
    assert data["policy.yaml"] == shipped
    policy_path = Path(container_settings().policy)
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == "policy"]
    # a subPath mount is never updated by kubelet, so a changed ConfigMap would not reload
    assert "subPath" not in mount
    assert policy_path.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod()["spec"]["volumes"] if v["name"] == "policy"]
    assert volume["configMap"]["name"] == manifest("configmap.yaml")["metadata"]["name"]
    assert policy_path.name in data
    assert "reload" in " ".join(manifest("configmap.yaml")["metadata"]["annotations"])


def test_configmap_is_rendered_from_the_shipped_policy() -> None:
    spec = importlib.util.spec_from_file_location("configmap", KUBERNETES / "configmap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = "policies/agentstack.yaml"
    rendered = module.render(ROOT / source, source)
    assert rendered == (KUBERNETES / "configmap.yaml").read_text(encoding="utf-8"), (
        "configmap.yaml is out of date: python deploy/kubernetes/configmap.py "
        "> deploy/kubernetes/configmap.yaml"
    )


def test_configmap_policy_passes_policy_check(tmp_path: Path) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text(manifest("configmap.yaml")["data"]["policy.yaml"], encoding="utf-8")
    assert load_policy(file).name == "agentstack"


def test_service_and_disruption_budget_select_the_gateway_pods() -> None:
    labels = pod()["metadata"]["labels"]
    service = manifest("service.yaml")["spec"]
    assert service["selector"].items() <= labels.items()
    names = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["ports"]} == names
    budget = manifest("pdb.yaml")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] < manifest("deployment.yaml")["spec"]["replicas"]
