"""Operations endpoints on the admin listener: metrics, liveness, readiness, OpenAPI."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.errors import StoreUnavailable
from gateway.metering.store import Store
from gateway.metrics import Metrics, exposition, multiprocess_dir, workers_state


class OpsApi:
    def __init__(self, *, store: Store, metrics: Metrics, workers: int = 1) -> None:
        self._store = store
        self._metrics = metrics
        self._workers = workers

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
        text = resources.files("gateway.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
        return web.Response(text=text, content_type="application/yaml")
