"""kvstores: the original's replicated Redis and Memcached, over this project's consensus.

Each replica runs a real ``redis-server`` or ``memcached`` on a private unix socket and a front end
speaking the real protocol; the leader proposes every write through ``consensus`` and every replica
applies the committed log, in order, to its own server (docs/kvstores.md).

Rule 1: only ``python -m kvstores`` and the modules' documented functions are public.
"""
