"""forwarding.yaml: subscriptions, stream clients, targets, rules and pull sources; pure after loading."""

from __future__ import annotations

from relay.routing.config import (
    MODULES,
    RoutingConfig,
    check_config,
    describe,
    load_config,
)
from relay.routing.rules import route
from relay.routing.transforms import apply_transforms

__all__ = ["MODULES", "RoutingConfig", "apply_transforms", "check_config", "describe", "load_config", "route"]
