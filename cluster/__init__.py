"""The runtime layer: where things run (Ray connection, resources, actors) and where state
lives (run directories, metrics, checkpoints, seeds). Imports nothing else of reinforge.

Heavy imports (ray, torch) happen inside functions so `reinforge --help` stays fast.
"""

from cluster.errors import ReinforgeError

__all__ = ["ReinforgeError"]
