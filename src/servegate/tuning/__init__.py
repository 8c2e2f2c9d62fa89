"""``servegate tune``: the batching configuration with the highest throughput within the SLOs,
searched on the live server (``search`` decides, ``costs`` and ``measure`` measure, ``report``
prints and logs the frontier)."""
