"""On-vehicle runtime: the fixed-rate control loop and the ``edge-run`` command (torch-free)."""
