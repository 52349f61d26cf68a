"""Operations endpoints on the admin listener: metrics, liveness, readiness, OpenAPI."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.errors import StoreUnavailable
from gateway.metering.store import Store
from gateway.metrics import Metrics, exposition, multiprocess_dir, workers_state
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy


class OpsApi:
    def __init__(
        self, *, store: Store, metrics: Metrics, policy: PolicyHolder, workers: int = 1
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._workers = workers
        self._policy = policy
        self._document: tuple[str, str] | None = None  # (policy digest, text)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/openapi.yaml", self.openapi),
        ]

    async def metrics(self, request: web.Request) -> web.Response:
        body = exposition(self._metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: the event loop answers. Says nothing about the store (that is /readyz)."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready: this process reaches the store and, with several workers, every worker is
        accepting requests and none has its store degraded (each one's probe keeps that true)."""
        try:
            await self._store.ping()
        except StoreUnavailable as exc:
            return web.json_response({"status": "unavailable", "store": str(exc)}, status=503)
        path = multiprocess_dir()
        if path is not None:
            serving, degraded = workers_state(path)
            if serving < self._workers or degraded:
                return web.json_response(
                    {
                        "status": "unavailable",
                        "workers": f"{serving} of {self._workers} accepting requests"
                        + (", a worker cannot reach the store" if degraded else ""),
                    },
                    status=503,
                )
        return web.json_response({"status": "ready"})

    async def openapi(self, request: web.Request) -> web.Response:
        """The document, with the active policy's names where it says ``x-policy-enum``."""
        policy = self._policy.current
        if self._document is None or self._document[0] != policy.digest:
            self._document = (policy.digest, document(policy))
        return web.Response(text=self._document[1], content_type="application/yaml")


def document(policy: Policy) -> str:
    """gateway/api/openapi.yaml for this policy, so the document refuses what the gateway
    refuses: a schema marked ``x-policy-enum`` lists the policy's tiers, key prefixes or
    package kinds; ``x-policy-packages`` its package sizes per kind; ``x-policy-project-keys``
    the prefixes whose keys need a project."""
    text = resources.files("gateway.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    packages = policy.billing.packages if policy.billing is not None else {}
    names: dict[str, list[str]] = {
        "tiers": sorted(policy.tiers),
        "key_prefixes": sorted(k.prefix for k in policy.key_types),
        "package_kinds": sorted(packages),
        "cap_modules": sorted(policy.service_caps.modules) if policy.service_caps else [],
    }

    def fill(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("x-policy-enum") in names:
                node["enum"] = names[node["x-policy-enum"]]
            if node.get("x-policy-project-keys"):
                # a project key names its project
                project = sorted(k.prefix for k in policy.key_types if k.kind == "project")
                node["if"] = {"properties": {"prefix": {"enum": project}}}
                node["then"] = {
                    "required": ["project_id"],
                    "properties": {"project_id": {"not": {"type": "null"}}},
                }
            if node.get("x-policy-packages"):
                # a size belongs to its kind: one alternative per kind
                node["oneOf"] = [
                    {"properties": {"kind": {"const": kind}, "size": {"enum": sorted(sizes)}}}
                    for kind, sizes in sorted(packages.items())
                ] or [{"not": {}}]
            for value in node.values():
                fill(value)
        elif isinstance(node, list):
            for value in node:
                fill(value)

    fill(doc)
    return str(yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True))
