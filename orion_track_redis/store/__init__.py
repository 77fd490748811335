"""The data on Redis: key layout aside (keys.py), the Lua scripts, the reads and writes of
trials, experiments, the algorithm lock, reservation leases and schema migrations."""
