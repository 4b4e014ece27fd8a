"""Forwarding to partners: outbox workers (``worker``), what goes on the wire (``senders``), the retry
policy (``backoff``) and the operator commands `relay dead` / `relay replay` (``cli``)."""
