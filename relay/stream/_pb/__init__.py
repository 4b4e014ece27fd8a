"""Code generated from protos/ocpi_relay/v1/relay.proto by `python -m relay.stream._pb.generate`.

Never edit relay_pb2*.py by hand; change the proto and regenerate.
"""
