"""HTTP headers shared by the benchmark client and this project's servers (routing proxy, emulated fleet).

Defined once so that a client recording them and a server setting them cannot drift apart.
"""

#: Response header in which a routing front end (``balanceroute proxy``, the emulated fleet's DP front end) names
#: the worker it chose; the benchmark client records it per request with ``worker_header=WORKER_HEADER``.
WORKER_HEADER = "X-Balanceroute-Worker"
#: Request id header: the benchmark client sends ``<prefix>-<i>``, vLLM takes it as its request id, and the proxy
#: and the emulator echo it back (making a new one when none was sent), so server logs join to client records.
REQUEST_ID_HEADER = "X-Request-Id"
