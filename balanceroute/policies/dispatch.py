"""How requests reach the workers, the one definition every backend and the proxy share (ALGORITHMS.md section 3).

- ``on_arrival``: each request is routed when it arrives and queues at its worker (vLLM's internal DP balancer);
- ``pool``: requests wait centrally, oldest first, and a placement round (the policy's ``assign``) fills free
  slots, choosing which waiting requests go where (the BR paper's decode admission, BF-IO).

A round shows the policy at most :data:`POOL_WINDOW` of the oldest waiting requests, as a real router bounds its
scan, so a round's cost does not grow with the queue.
"""
from __future__ import annotations

DISPATCH_MODES = ("on_arrival", "pool")

#: Waiting requests a pool round considers at most (the oldest ones).
POOL_WINDOW = 1024
