"""Writes tests/data/states_otrs1.json: algorithm states as the uncompressed OTRS1 code wrote them
(commit fb3398e, before zstd compression), for tests/unit/test_statecodec.py's old-format tests
(Legacy's raw pickles need no fixture: they are plain ``pickle.dumps``).
Run from a checkout of that commit (rarely needed):
    git worktree add /tmp/otrs1 fb3398e && cd /tmp/otrs1 && python tests/data/make_states_otrs1.py OUT
"""
import base64
import json
import pickle
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "unit"
sys.path.insert(0, str(TESTS))
from test_datapickle import DATA_SAMPLE  # noqa: E402
from test_statecodec import SAMPLE, SECRET, real_state  # noqa: E402

from orion_track_redis.state.codec import dump_state  # noqa: E402

_, RANDOM = real_state("random")
b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
out = {"written_by": "orion-track-redis "
       + subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        cwd=TESTS).stdout.strip() + " (tests/data/make_states_otrs1.py)",
       "secret": SECRET.decode(), "states": {}}
for name, value in (("sample", SAMPLE), ("data-sample", DATA_SAMPLE), ("random-12", RANDOM)):
    out["states"][name] = {
        "reference": b64(pickle.dumps(value, 5)),  # what each form must load back to
        "unsigned": b64(dump_state(value, None)),  # data-only form when the value allows it
        "signed": b64(dump_state(value, SECRET)),
    }
Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
