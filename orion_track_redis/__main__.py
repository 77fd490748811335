import sys

from orion_track_redis.ops.cli import main

sys.exit(main())
