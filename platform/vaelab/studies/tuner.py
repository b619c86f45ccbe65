"""Building the Ray Tune Tuner of a study run: search space, param space, Tune and run config.

    grid / random   tune.grid_search over the pre-expanded cohorts (one Tune trial each)
    optuna          OptunaSearch (+ ConcurrencyLimiter, optional ASHA) over the study's
                    search space; every trial is a cohort of one

Imports ray (and optuna) lazily, inside functions.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

from vaelab.errors import RunnerError
from vaelab.studies.plan import LaunchPlan
from vaelab.studies.progress import progress_callback
from vaelab.studies.trial import COHORT_KEY, CTX_KEY, PARAMS_KEY, cohort_trainable
from vaelab.tracking.tags import TAG_GIT_SHA

# A trial's process outlives it and runs the next trial of the same resource shape: a fresh
# process paid ~7 s of imports, store and data set-up per tiny trial (benchmarks/
# tiny_trials.py). `cohort_trainable` redoes what is per trial (CPU threads, compile caches).
REUSE_ACTORS = True


def _cpu_slots(resources: Mapping[str, float]) -> int:
    """How many trials fit on the cluster's CPUs at once."""
    import ray

    cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    return max(1, int(cpus // max(resources.get("cpu", 1) or 1, 1e-9)))


def _trainable(resources: Mapping[str, float]):
    from ray import tune

    return tune.with_resources(
        cohort_trainable, {k: v for k, v in resources.items() if v}
    )


def _search_space(spec: Mapping[str, tuple]) -> dict[str, Any]:
    """The study's search space (('uniform', lo, hi), ...) as Tune domains."""
    from ray import tune

    makers: dict[str, Callable[..., Any]] = {
        "uniform": tune.uniform,
        "loguniform": tune.loguniform,
        "randint": tune.randint,  # hi excluded, as in expand's random sampler
        "choice": lambda values: tune.choice(list(values)),
        "grid": lambda values: tune.choice(list(values)),
    }
    space = {}
    for name, item in spec.items():
        kind, *args = item
        if kind not in makers:
            raise RunnerError(f"search space: {name}: {kind!r} is not supported by optuna search")
        space[name] = makers[kind](*args)
    return space


def _param_space(plan: LaunchPlan, ctx: Mapping[str, Any]) -> dict[str, Any]:
    from ray import tune

    if plan.optuna:
        return {CTX_KEY: dict(ctx), PARAMS_KEY: _search_space(plan.optuna.space)}
    cohorts = [
        {"index": i, "members": [dataclasses.asdict(m) for m in members]}
        for i, members in enumerate(plan.cohorts)
    ]
    return {CTX_KEY: dict(ctx), COHORT_KEY: tune.grid_search(cohorts)}


def _tune_config(plan: LaunchPlan):
    from ray import tune

    if not plan.optuna:
        return tune.TuneConfig(
            num_samples=1, trial_dirname_creator=trial_dirname, max_concurrent_trials=plan.max_concurrent,
            reuse_actors=REUSE_ACTORS,
        )
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    opt = plan.optuna
    concurrent = opt.max_concurrent or _cpu_slots(plan.resources)
    searcher = ConcurrencyLimiter(OptunaSearch(seed=opt.seed), max_concurrent=concurrent)
    scheduler = None
    if opt.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        # One Tune result per epoch, so training_iteration counts epochs (also after a restore).
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=opt.epochs,
            grace_period=int(opt.asha.get("grace_period", 1)),
            reduction_factor=float(opt.asha.get("reduction_factor", 4)),
        )
    return tune.TuneConfig(
        metric=opt.metric,
        mode=opt.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=opt.num_samples,
        trial_dirname_creator=trial_dirname,
        reuse_actors=REUSE_ACTORS,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default embeds the whole cohort config)."""
    cohort = trial.config.get(COHORT_KEY)
    prefix = f"cohort_{cohort['index']:04d}" if cohort else "trial"
    return f"{prefix}-{trial.trial_id}"  # Tune trial ids hold no '-'; runner._tune_statuses parses it back


def _run_config(name: str, storage: str, plan: LaunchPlan, progress: bool):
    from ray import tune

    callbacks = [progress_callback(plan.metric, plan.mode, plan.n_trials)] if progress else []
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=0,
        callbacks=callbacks,
    )


def new_tuner(plan: LaunchPlan, ctx: Mapping[str, Any], run_name: str, storage: str, progress: bool):
    """The Tuner of a fresh study run: every trial of `plan`, with the study context `ctx`."""
    from ray import tune

    return tune.Tuner(
        _trainable(plan.resources),
        param_space=_param_space(plan, ctx),
        tune_config=_tune_config(plan),
        run_config=_run_config(run_name, storage, plan, progress),
    )


def restored_tuner(experiment_path: str, resources: Mapping[str, float]):
    """The Tuner of an interrupted study run, from Tune's saved state (errored trials rerun)."""
    from ray import tune

    try:
        return tune.Tuner.restore(experiment_path, trainable=_trainable(resources), resume_errored=True)
    except (AttributeError, ImportError) as err:
        # Tune pickles the functions it was given (trial_dirname, the progress callback) by
        # module path: a run started by another vaelab version may name ones this one lacks
        raise RunnerError(
            f"{experiment_path}: Ray Tune's saved state refers to vaelab code this version does "
            f"not have ({err}); the run was started by another version of vaelab (its git SHA is "
            f"the study run's MLflow tag {TAG_GIT_SHA}). Resume it with that version, or start "
            "the study again with `vaelab run`."
        ) from None
