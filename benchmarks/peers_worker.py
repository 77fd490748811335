"""The worker processes of benchmarks/peers.py that are not ``orion hunt``: an Optuna worker
(``study.optimize``) and an Oríon Python API worker (a suggest/observe loop calling the
objective in-process). Both log each trial's start and end like the Oríon objective script."""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.peers_common import _optuna_storage

SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"}


def build_api_experiment(uri: str, name: str, trials: int, algo: str):
    from orion.client import build_experiment

    return build_experiment(
        name,
        space=SPACE,
        algorithm={algo: {"seed": None}},
        max_trials=trials,
        max_broken=1000,
        storage={"type": "redis", "uri": uri},
    )


def _runs_file(spec: dict):
    return open(Path(spec["runs"]) / f"runs-{spec['worker']}.jsonl", "a", buffering=1)  # noqa: SIM115


def orion_api_worker_main(spec: dict) -> int:
    """Oríon's ``ExperimentClient`` on this backend, the loop ``workon`` runs (suggest, call,
    observe) with the objective in this process: no process per trial, unlike ``orion hunt``."""
    import logging
    import warnings

    from orion.core.utils.exceptions import (
        CompletedExperiment,
        ReservationRaceCondition,
        WaitingForTrials,
    )

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    client = build_api_experiment(spec["uri"], spec["name"], spec["trials"], spec["algo"])
    fh, sleep = _runs_file(spec), spec["sleep_s"]
    try:
        while True:
            try:
                trial = client.suggest()
            except CompletedExperiment:
                break
            except (WaitingForTrials, ReservationRaceCondition):
                if client.is_done:
                    break
                time.sleep(0.05)
                continue
            x, y = trial.params["x"], trial.params["y"]
            rec = {"w": spec["worker"], "trial": trial.id, "x": x, "y": y}
            fh.write(json.dumps(dict(rec, ev="start", t=time.time())) + "\n")
            if sleep:
                time.sleep(sleep)
            value = (x - 2) ** 2 + (y + 1) ** 2
            client.observe(trial, [{"name": "objective", "type": "objective", "value": value}])
            fh.write(json.dumps(dict(rec, ev="end", t=time.time())) + "\n")
    finally:
        client.close()
    return 0


def optuna_worker_main(spec: dict) -> int:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _optuna_storage(spec, heartbeat=spec.get("heartbeat", False))
    sampler = (
        optuna.samplers.RandomSampler()
        if spec["algo"] == "random"
        else optuna.samplers.TPESampler()
    )
    study = optuna.load_study(study_name=spec["study"], storage=storage, sampler=sampler)
    fh, sleep = _runs_file(spec), spec["sleep_s"]

    def objective(trial):
        x, y = trial.suggest_float("x", -5, 5), trial.suggest_float("y", -5, 5)
        rec = {"w": spec["worker"], "trial": trial.number, "x": x, "y": y}
        fh.write(json.dumps(dict(rec, ev="start", t=time.time())) + "\n")
        if sleep:
            time.sleep(sleep)
        value = (x - 2) ** 2 + (y + 1) ** 2
        fh.write(json.dumps(dict(rec, ev="end", t=time.time())) + "\n")
        return value

    if spec.get("n_trials"):  # one worker alone (memory): its own count, no per-trial query
        study.optimize(objective, n_trials=spec["n_trials"])
    else:
        study.optimize(
            objective, callbacks=[MaxTrialsCallback(spec["trials"], states=(TrialState.COMPLETE,))]
        )
    return 0
