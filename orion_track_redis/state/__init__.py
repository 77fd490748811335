"""The algorithm's state: its signed or data-only encoding, the deltas of versioned state,
and which version a worker's in-memory algorithm is at."""
