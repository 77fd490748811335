"""The operator's tools: the ``orion-redis`` command, fleet status, metrics and moving
experiments between storages."""
