"""The effective forwarding.yaml as plain data for ``relay check-config``, every secret masked.

Also what the log redaction filter must hide of a URL: its password and query values.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from relay.ocpi.paths import MODULES
from relay.routing.model import Condition, CpoPattern, RoutingConfig, Transform, format_cpo
from relay.settings import Secret

MASK = "**********"


def redact_url(url: str) -> str:
    """``url`` safe to show: a password and every query value masked (they are often credentials)."""
    parts = urlsplit(url)
    if not parts.query and parts.password is None:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True)) or MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The query values of ``url`` long enough to be credentials (for the log redaction filter)."""
    return [v for _, v in parse_qsl(urlsplit(url).query) if len(v) >= 8]


def describe(config: RoutingConfig) -> dict[str, Any]:
    """The effective configuration as plain data, every secret shown as ``**********``."""

    def modules(ms: frozenset[str] | None) -> list[str] | None:
        return None if ms is None else [m for m in MODULES if m in ms]

    def cpos(ps: tuple[CpoPattern, ...] | None) -> list[str] | None:
        return None if ps is None else [str(p) for p in ps]

    def cpo(c: tuple[str, str] | None) -> str | None:
        return None if c is None else format_cpo(*c)

    def mask(s: Secret | None) -> str | None:
        return None if s is None else MASK

    def transform(t: Transform) -> dict[str, Any]:
        if t.kind in ("keep", "drop"):
            return {t.kind: list(t.fields)}
        options: dict[str, dict[str, Any]] = {"pseudonymise": {"key": mask(t.key)}, "round": {"decimals": t.decimals}}
        extra = options.get(t.kind)
        return {t.kind: {"fields": list(t.fields), **(extra or {"unit": t.unit})}}

    def condition(c: Condition) -> dict[str, Any]:
        return {"field": c.path, c.op: list(c.value) if isinstance(c.value, tuple) else c.value}

    return {
        "path": config.path,
        "subscriptions": [
            {"name": s.name, "token": MASK, "cpos": cpos(s.cpos), "modules": modules(s.modules),
             "default_cpo": cpo(s.default_cpo), "accept_base64": s.accept_base64, "strict": s.strict,
             "tokens": len(s.tokens), "allow_ips": [str(n) for n in s.allow_ips]}
            for s in config.subscriptions
        ],
        "stream_clients": [
            {"name": c.name, "token": MASK, "modules": modules(c.modules), "cpos": cpos(c.cpos),
             "tokens": len(c.tokens), "allow_ips": [str(n) for n in c.allow_ips]}
            for c in config.stream_clients
        ],
        "targets": [
            {"name": t.name, "type": t.type, "url": redact_url(t.url), "secret": mask(t.secret), "token": mask(t.token),
             "timeout": t.timeout, "concurrency": t.concurrency, "rate_limit": t.rate_limit,
             "max_attempts": t.max_attempts, "retry_base": t.retry_base, "retry_max": t.retry_max,
             "headers": {name: MASK for name, _ in t.headers}, "secrets": len(t.secrets)}
            for t in config.targets
        ],
        "rules": [
            {"name": r.name,
             "match": {"modules": modules(r.match.modules), "cpos": cpos(r.match.cpos),
                       "actions": None if r.match.actions is None else sorted(r.match.actions),
                       "conditions": [condition(c) for c in r.match.conditions],
                       "subscriptions": None if r.match.subscriptions is None else sorted(r.match.subscriptions)},
             "to": list(r.to), "transform": [transform(t) for t in r.transform]}
            for r in config.rules
        ],
        "pull": [
            {"name": p.name, "url": redact_url(p.url), "token": MASK, "modules": list(p.modules), "interval": p.interval,
             "default_cpo": cpo(p.default_cpo), "page_limit": p.page_limit, "timeout": p.timeout}
            for p in config.pull
        ],
    }

