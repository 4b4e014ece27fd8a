# ocpi-relay: slim, non-root image. Build: docker build -t ocpi-relay .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/relay --create-home relay
COPY --from=build /install /usr/local
COPY forwarding.yaml /etc/relay/forwarding.yaml
USER relay
WORKDIR /var/lib/relay
# Safe by default: the receiver and gRPC listen on every interface, so `relay serve` refuses to start
# unless each has its certificate (RELAY_HTTP_TLS_CERT/_KEY, RELAY_GRPC_TLS_CERT/_KEY, or RELAY_GRPC=false;
# README "Put it on the internet") or RELAY_ALLOW_PLAINTEXT=true says a TLS proxy in front encrypts.
# /metrics, /healthz, /readyz live on the loopback ops listener (plain HTTP, not reachable from outside
# the container), which the health check below uses.
ENV RELAY_CONFIG=/etc/relay/forwarding.yaml \
    RELAY_DATABASE_URL=sqlite:////var/lib/relay/relay.db \
    RELAY_HTTP_HOST=0.0.0.0 \
    RELAY_GRPC_HOST=0.0.0.0 \
    RELAY_ALLOW_PLAINTEXT=false \
    RELAY_OPS_HOST=127.0.0.1 \
    RELAY_OPS_PORT=9090 \
    PYTHONUNBUFFERED=1
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import os,urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_OPS_PORT', '9090'), timeout=2).status == 200 else 1)"
ENTRYPOINT ["relay"]
CMD ["serve"]
