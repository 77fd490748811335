"""Server commands per call: what redis-py sends and INFO commandstats' deltas, per storage call."""

from __future__ import annotations

import uuid

from benchmarks.common import _Exp, _experiment_config, _new_trial, _redis_storage, _set_result


class _SentCounter:
    """Counts the commands redis-py sends: ``send_command`` (one command) and ``pack_commands``
    (a pipeline), patched on every connection class of redis.connection that defines them."""

    def __init__(self):
        import redis.connection as rc

        self.count = 0
        self.patched = []
        for cls in vars(rc).values():
            if not isinstance(cls, type) or cls.__module__ != rc.__name__:
                continue
            for attr in ("send_command", "pack_commands"):
                if attr in vars(cls):
                    self.patched.append((cls, attr, vars(cls)[attr]))

    def __enter__(self):
        counter = self

        def wrap(attr, original):
            if attr == "send_command":

                def patched(conn, *args, **kwargs):
                    counter.count += 1
                    return original(conn, *args, **kwargs)
            else:

                def patched(conn, commands):
                    commands = list(commands)
                    counter.count += len(commands)
                    return original(conn, commands)

            return patched

        for cls, attr, original in self.patched:
            setattr(cls, attr, wrap(attr, original))
        return self

    def __exit__(self, *exc):
        for cls, attr, original in self.patched:
            setattr(cls, attr, original)


def section_commands(cfg, server):
    prefix = f"cmd-{uuid.uuid4().hex[:6]}"
    storage = _redis_storage(server.url, prefix)
    config = _experiment_config(prefix)
    storage.create_experiment(config)
    exp_id, exp = config["_id"], _Exp(config["_id"])
    n = cfg["cmd_calls"]
    stats_client = server.client()
    trials = [_new_trial(exp_id, 3, i) for i in range(n)]
    reserved = []

    def measure(label, fn, calls):
        before = stats_client.info("commandstats")
        with _SentCounter() as sent:
            for i in range(calls):
                fn(i)
        after = stats_client.info("commandstats")
        delta = {}
        for key, value in after.items():
            d = value["calls"] - before.get(key, {"calls": 0})["calls"]
            name = key.replace("cmdstat_", "")
            if name == "info":
                d -= 1  # our own INFO
            if d:
                delta[name] = d
        script_calls = sum(
            v
            for k, v in delta.items()
            if k in ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")
        )
        total = sum(delta.values())
        return {
            "op": label,
            "calls": calls,
            "client_commands_per_call": sent.count / calls,
            "script_calls_per_call": script_calls / calls,
            "server_commands_per_call_incl_in_script": total / calls,
            "commandstats_delta": delta,
        }

    # warm-up: connect and load every script once (a fresh server answers NOSCRIPT first)
    warm = storage.register_trial(_new_trial(exp_id, 4, 0))
    warm = storage.reserve_trial(exp)
    storage.update_heartbeat(warm)
    storage.push_trial_results(warm)
    storage.set_trial_status(warm, "completed", was="reserved")
    storage.fetch_trials(uid=exp_id)
    storage.fetch_pending_trials(exp)
    storage.fetch_lost_trials(exp)
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=10):
        pass
    rows = [
        measure("register_trial", lambda i: storage.register_trial(trials[i]), n),
        measure("reserve_trial", lambda i: reserved.append(storage.reserve_trial(exp)), n),
        measure("update_heartbeat", lambda i: storage.update_heartbeat(reserved[i]), n),
    ]
    for t in reserved:
        _set_result(t, 2.0)
    rows += [
        measure("push_trial_results", lambda i: storage.push_trial_results(reserved[i]), n),
        measure(
            "set_trial_status",
            lambda i: storage.set_trial_status(reserved[i], "completed", was="reserved"),
            n,
        ),
        measure(
            "fetch_trials (repeated, unchanged)",
            lambda i: storage.fetch_trials(uid=exp_id),
            max(10, n // 10),
        ),
        measure(
            "fetch_pending_trials", lambda i: storage.fetch_pending_trials(exp), max(10, n // 10)
        ),
        measure("fetch_lost_trials", lambda i: storage.fetch_lost_trials(exp), max(10, n // 10)),
    ]

    def lock_cycle(i):
        with storage.acquire_algorithm_lock(uid=exp_id, timeout=10) as locked:
            locked.set_state({"i": i})

    rows.append(measure("acquire+release algorithm lock", lock_cycle, max(10, n // 10)))
    return {"rows": rows}
