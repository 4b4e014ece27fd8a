"""ocpi-relay: receive, store, stream and forward GreenFlux OCPI 2.1.1 pushes."""

__version__ = "0.1.0"
