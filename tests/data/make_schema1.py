"""Writes tests/data/schema1.json with the code of schema 1. Re-run (rarely needed) with:
    git worktree add /tmp/v1 327f0f0 && python tests/data/make_schema1.py redis://127.0.0.1:PORT/0
"""
import sys, json, datetime, base64
sys.path.insert(0, "/tmp/v1")
sys.path.insert(0, "/work/main/tests")
import orion_track_redis, redis
assert orion_track_redis.__file__.startswith("/tmp/v1"), orion_track_redis.__file__
from orion_track_redis import Redis
from orion_track_redis.storage import SCHEMA_VERSION
from helpers import make_trial, create_experiment, Exp
assert SCHEMA_VERSION == 1
url = sys.argv[1]
prefix = "v1fixture"
st = Redis(uri=f"{url}?prefix={prefix}")
exp_a = create_experiment(st, name="alpha")
exp_b = create_experiment(st, name="beta")
trials = [st.register_trial(make_trial(exp_a, x=float(i), seconds=i)) for i in range(12)]
for i, t in enumerate(trials[:8]):
    r = st.reserve_trial(Exp(exp_a))
for i, t in enumerate(st.fetch_trials(uid=exp_a)):
    if t.status == "reserved" and i % 3 == 0:
        t.results = [t.Result(name="objective", type="objective", value=i * 0.5),
                     t.Result(name="extra", type="statistic", value=[1, 2, {"a": None}])]
        st.push_trial_results(t)
        st.set_trial_status(t, "completed", was="reserved")
    elif t.status == "reserved" and i % 3 == 1:
        st.set_trial_status(t, "broken", was="reserved")
st.register_trial(make_trial(exp_b, x=0.25, seconds=1))
st.delete_trials(uid=exp_a, where={"id": trials[-1].id})
with st.acquire_algorithm_lock(uid=exp_a) as locked:
    locked.set_state({"registry": {"n": 3}, "rng": (1, 2, 3)})
r = redis.Redis.from_url(url)
dump = {}
for key in sorted(k.decode() for k in r.scan_iter(match="{" + prefix + "*", count=1000)):
    if ":req:" in key: continue  # request ids expire within minutes
    kind = r.type(key).decode()
    b64 = lambda v: base64.b64encode(v).decode()
    if kind == "string": val = b64(r.get(key))
    elif kind == "hash": val = {b64(k): b64(v) for k, v in r.hgetall(key).items()}
    elif kind == "zset": val = [[b64(m), s] for m, s in r.zrange(key, 0, -1, withscores=True)]
    elif kind == "list": val = [b64(v) for v in r.lrange(key, 0, -1)]
    else: raise SystemExit(kind)
    dump[key] = {"type": kind, "value": val}
expected = {}
for exp in (exp_a, exp_b):
    expected[str(exp)] = [json.loads(json.dumps(t.to_dict(), default=str)) for t in st.fetch_trials(uid=exp)]
json.dump({"prefix": prefix, "schema": 1, "written_by": "orion-track-redis commit 327f0f0 (tests/data/make_schema1.py)",
           "experiments": {"alpha": exp_a, "beta": exp_b}, "keys": dump, "trials": expected},
          open("/work/main/tests/data/schema1.json", "w"), indent=1, sort_keys=True)
print(len(dump), "keys")
