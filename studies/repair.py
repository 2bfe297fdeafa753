"""What a resumed study writes that its store did not take: the runs of trials that ended while the store
could not be written (its disk full, its server gone past the grace) or while the driver was dying.

Tune does not run an ended trial again, so on --resume no callback would ever log those runs' last epochs,
their end and their checkpoint: they would stay unfinished, and every later --resume would say so again.
Tune's own record of each trial (every result it reported, its last checkpoint, its error) has all of it;
it is replayed through the study's tracking callback, which finds each run again by what the trial is and
writes only what the run lacks (every epoch once).
"""
from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from iabf import record as R
from studies.tracking import MLflowTracking


@dataclass
class Ended:
    """An ended trial as the tracking callback reads one, rebuilt from Tune's result (ray.tune.Result)."""
    trial_id: str
    config: dict
    last_result: dict
    checkpoint: object
    error: str | None

    def get_error(self) -> str | None:
        return self.error


def ended(client: MlflowClient, exp_id: str, parent: str) -> set[tuple[str, str]]:
    """(uid, seed) of the study's runs whose end the store took (they have a stop reason)."""
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50_000)
    return {(r.data.tags.get(R.UID, ""), r.data.tags.get(R.SEED, "")) for r in runs if R.STOP_REASON in r.data.tags}


def repair(uri: str, exp_id: str, parent: str, study: str, results) -> int:
    """Replay into the store every trial of Tune's `results` (a ResultGrid: after a resumed fit, every trial
    ended) whose runs lack their end, or are not there at all. Returns how many runs were written; raises
    what the store raises."""
    done, tracker = 0, MLflowTracking(uri, exp_id, parent, study)
    recorded = ended(MlflowClient(uri), exp_id, parent)
    for result in results:
        config = result.config or {}
        seeds = {str(p.cfg.seed) for p in R.parts(R.config_from_params(config))}
        if all((str(config.get(R.UID, "")), s) in recorded for s in seeds):   # a run and its end, for every seed
            continue
        trial = Ended(str(result.metrics.get(R.TRIAL_ID, "")), config, dict(result.metrics), result.checkpoint,
                      str(result.error) if result.error else None)
        frame = result.metrics_dataframe
        for past in ([] if frame is None else frame.to_dict("records")):   # every result Tune recorded, in order
            tracker.on_trial_result(0, [], trial, past)
        if trial.error:
            tracker.on_trial_error(0, [], trial)
        else:
            tracker.on_trial_complete(0, [], trial)
        done += len(seeds)
    tracker.on_experiment_end([])   # what a hook could not write, tried once more
    if tracker.unlogged():
        raise OSError(f"{tracker.unlogged()} updates of the ended trials could not be written")
    return done
