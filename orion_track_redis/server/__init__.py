"""The Redis server side: the client a storage connects with, the embedded default, the
``redis-server`` binaries, the checks of a server, and ``orion-redis serve``."""
