"""forwarding.yaml: subscriptions, stream clients, targets, rules and pull sources; pure after loading.

model.py holds the typed objects, loader.py reads the file (fields.py and rule_reader.py under it),
tokens.py finds a token's owner in constant time, describe.py shows the config with secrets masked.
"""

from __future__ import annotations

from relay.routing.describe import describe
from relay.routing.loader import check_config, load_config
from relay.routing.model import PullSource, RoutingConfig
from relay.routing.rules import route
from relay.routing.transforms import apply_transforms

__all__ = ["PullSource", "RoutingConfig", "apply_transforms", "check_config", "describe", "load_config", "route"]
