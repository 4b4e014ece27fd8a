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
ENV RELAY_CONFIG=/etc/relay/forwarding.yaml \
    RELAY_DATABASE_URL=sqlite:////var/lib/relay/relay.db \
    RELAY_HTTP_HOST=0.0.0.0 \
    RELAY_GRPC_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["relay"]
CMD ["serve"]
