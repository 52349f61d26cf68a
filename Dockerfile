# The quota gateway: `docker build -t quota-gateway .`, then see deploy/compose.yaml.
# Listens on 8080 (proxy) and 9090 (admin: /metrics, /healthz, /readyz, admin API).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# only what the package build reads, so an edit to tests or docs keeps this layer cached;
# gateway/policies and gateway/config link to policies/ and config/, which the package ships
COPY pyproject.toml README.md LICENSE /tmp/build/
COPY policies /tmp/build/policies
COPY config /tmp/build/config
COPY gateway /tmp/build/gateway
# with the [otel] extra: OpenTelemetry spans stay off until tracing.endpoint is configured
RUN pip install --no-cache-dir "/tmp/build[otel]" && rm -rf /tmp/build

# the shipped policies; mount your own over /etc/gateway/policies (or pass --policy)
COPY policies /etc/gateway/policies

WORKDIR /opt/gateway

# a fixed numeric id so Kubernetes' runAsNonRoot can check it; no home, no shell
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gateway
USER 10001:10001

EXPOSE 8080 9090

# alive means the admin listener answers; readiness (the store) is /readyz, for load balancers
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]

ENTRYPOINT ["gateway"]
CMD ["serve", "--listen", ":8080", "--admin-listen", ":9090", "--policy", "/etc/gateway/policies/agentstack.yaml"]
