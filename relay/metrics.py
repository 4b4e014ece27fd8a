"""Prometheus metrics, declared once (one registry per process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

REGISTRY = CollectorRegistry(auto_describe=True)

INGEST_REQUESTS = Counter(
    "relay_ingest_requests", "Receiver requests by module, HTTP status and OCPI status_code",
    ["module", "http_status", "status_code"], registry=REGISTRY,
)
INGEST_LATENCY = Histogram(
    "relay_ingest_latency_seconds", "Receiver latency until the answer (after commit)", ["module"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
EVENTS = Counter("relay_events", "Pushes by module and outcome (applied, stale, identical, unmatched)",
                 ["module", "outcome", "origin"], registry=REGISTRY)
UNMATCHED = Counter("relay_unmatched_events", "EVSE/connector pushes whose parent could not be matched",
                    ["module"], registry=REGISTRY)
REJECTED = Counter("relay_rejected", "Refused requests kept in `rejected`", ["module", "http_status"], registry=REGISTRY)
AUTH_FAILURES = Counter("relay_auth_failures", "Requests without a valid token (never stored)", ["kind"], registry=REGISTRY)
STORE_BATCH = Histogram("relay_store_batch_size", "Operations per group commit",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=REGISTRY)
STORE_QUEUE_FULL = Counter("relay_store_queue_full", "Writes that found the group-commit queue full and waited",
                           registry=REGISTRY)
STORE_QUEUE_REFUSED = Counter("relay_store_queue_refused",
                              "Writes refused 503/3000: no room in the group-commit queue within the deadline",
                              registry=REGISTRY)
STORE_ROWS_REFUSED = Counter("relay_store_rows_refused",
                             "Operations the database refused for their values, isolated from their batch",
                             registry=REGISTRY)
STREAM_SUBSCRIBERS = Gauge("relay_stream_subscribers", "Open gRPC Subscribe streams", registry=REGISTRY)
STREAM_EVENTS = Counter("relay_stream_events", "Events sent to gRPC subscribers", registry=REGISTRY)
STREAM_LAG = Gauge("relay_stream_max_lag", "Largest lag (events) of an open subscriber", registry=REGISTRY)
OUTBOX_DEPTH = Gauge("relay_outbox_depth", "Pending + in-flight deliveries per target", ["target"], registry=REGISTRY)
DEAD_LETTERS = Gauge("relay_dead_letters", "Dead deliveries per target", ["target"], registry=REGISTRY)
DELIVERIES = Counter("relay_deliveries", "Delivery attempts by target and outcome", ["target", "outcome"], registry=REGISTRY)
DELIVERY_LATENCY = Histogram(
    "relay_delivery_latency_seconds", "From event receipt to successful delivery", ["target"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900), registry=REGISTRY,
)
PULL_OBJECTS = Counter("relay_pull_objects", "Pulled objects by source and outcome", ["source", "outcome"], registry=REGISTRY)
PULL_ONLY_CHANGES = Counter("relay_pull_only_changes",
                            "Changes found only by a pull (pushes that were lost upstream)", ["source", "module"],
                            registry=REGISTRY)
HTTP_CONNECTIONS_REFUSED = Counter(
    "relay_http_connections_refused", "Receiver connections cut at the edge (header_timeout, body_timeout, "
    "header_too_large, connection_limit)", ["reason"], registry=REGISTRY,
)
IP_REFUSED = Counter("relay_ip_refused", "Pushes and reads with a valid token from outside the subscription's "
                     "allow_ips (answered 403, never stored)", ["subscription"], registry=REGISTRY)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: MetricWrapperBase, *values: str) -> Any:
    """``metric.labels(*values)``, kept: a label lookup takes a lock and builds tuples, and the hot
    path asks for the same few children on every push."""
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child
