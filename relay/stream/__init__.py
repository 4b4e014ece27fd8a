"""The gRPC side: stream stored events to internal services, serve current state (protos/ is the contract)."""
