"""Pull mode: GreenFlux's OCPI 2.1.1 sender interface, polled to repair pushes lost upstream.

``client`` fetches paginated module lists, ``sync`` runs one pass into the store, ``scheduler``
runs the passes on their intervals inside `relay serve`, ``cli`` is `relay pull`.
"""
