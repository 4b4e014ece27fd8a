"""Prometheus metrics, declared once (one registry per process)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.metrics import MetricWrapperBase

from relay import __version__

REGISTRY = CollectorRegistry(auto_describe=True)
# the standard process_*, python_info and python_gc_* families, as on the default registry
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

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
# -- monitoring: what deploy/prometheus/alerts.yml watches (README "Alerts") --
BUILD_INFO = Gauge("relay_build_info", "Always 1; the relay's version as a label", ["version"], registry=REGISTRY)
BUILD_INFO.labels(__version__).set(1)
LAST_PUSH = Gauge("relay_last_push_timestamp_seconds",
                  "Unix time of the last accepted push per subscription and module (silence = time() - this)",
                  ["subscription", "module"], registry=REGISTRY)
BREAKER_STATE = Gauge("relay_circuit_breaker_state", "Delivery circuit breaker per target: 0 closed, 1 half-open "
                      "(a probe may go), 2 open (sends paused)", ["target"], registry=REGISTRY)
OLDEST_PENDING = Gauge("relay_outbox_oldest_pending_age_seconds",
                       "Age of the oldest pending or in-flight delivery per target (0 when none)", ["target"],
                       registry=REGISTRY)
PULL_LAST_SUCCESS = Gauge("relay_pull_last_success_timestamp_seconds",
                          "Unix time the last pull pass of a source ended with every module ok", ["source"],
                          registry=REGISTRY)
PULL_FAILURES = Gauge("relay_pull_consecutive_failures",
                      "Pull passes of a source in a row with a failed module (0 after a good pass)", ["source"],
                      registry=REGISTRY)
CONSUMER_LAG = Gauge("relay_consumer_lag_events", "Events a durable stream consumer has not committed yet",
                     ["consumer"], registry=REGISTRY)
SILENT_SESSIONS = Gauge("relay_sessions_silent", "ACTIVE sessions with no update for RELAY_SESSION_SILENCE seconds",
                        registry=REGISTRY)
SILENT_LOCATIONS = Gauge("relay_locations_silent", "Locations with no update for RELAY_LOCATION_SILENCE hours",
                         registry=REGISTRY)
LOCATIONS = Gauge("relay_locations", "Locations in the stored state", registry=REGISTRY)
DATABASE_SIZE = Gauge("relay_database_size_bytes", "Database size: SQLite file + WAL, PostgreSQL pg_database_size",
                      registry=REGISTRY)
MONITOR_REFRESHED = Gauge("relay_monitor_refresh_timestamp_seconds",
                          "Unix time the store-derived gauges (silence, database size, lag) were last refreshed",
                          registry=REGISTRY)

REJECTED_DROPPED = Counter(
    "relay_rejected_dropped", "Refusals answered but not kept: the subscription's `rejected` records are at "
    "RELAY_REJECTED_MAX_PER_SUBSCRIPTION", ["subscription"], registry=REGISTRY,
)
RETENTION_REMOVED = Counter("relay_retention_removed", "Rows removed by retention passes", ["table"], registry=REGISTRY)
RETENTION_HELD = Gauge(
    "relay_consumer_retention_held_events", "Events older than RELAY_RETENTION kept because this durable "
    "consumer's cursor has not passed them (at the last retention pass)", ["consumer"], registry=REGISTRY,
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


def forget(metric: MetricWrapperBase, *values: str) -> None:
    """Drop a labelled child (a target or source that left the config) so it stops being exported."""
    _children.pop((id(metric), values), None)
    with contextlib.suppress(KeyError):
        metric.remove(*values)
