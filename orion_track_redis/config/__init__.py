"""Where a storage connects and how: the URI grammar, the options and their validation,
and the configurations that would point a worker elsewhere."""
