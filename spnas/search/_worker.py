"""Creating a search study, and the worker loop that runs its trials."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from spnas.exceptions import ConfigError
from spnas.search._config import CONFIG_ATTR, SearchConfig
from spnas.search._objective import Objective, load_pretrained_seed
from spnas.search._sampler import SPNASSampler
from spnas.search._state import SearchState
from spnas.storage import StorageError, check_artifact_store, make_storage, redact

_logger = logging.getLogger(__name__)


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if old == new else [f"{where}: {old!r} → {new!r}"]


def prepare_data(config: SearchConfig) -> None:
    """Generate the synthetic data set when the config asks for one and it is missing."""
    synthetic = config.data.synthetic_settings
    root = Path(config.data.dir)
    if synthetic is None or (root / "train.json").is_file():
        return
    from spnas.data.synthetic import make_synthetic_dataset

    _logger.info("generating the synthetic data set in %s", root)
    make_synthetic_dataset(
        root,
        train=synthetic.train,
        val=synthetic.val,
        size=synthetic.size,
        classes=synthetic.classes,
        max_objects=synthetic.max_objects,
        seed=synthetic.seed,
        show_progress=config.engine.show_progress,
    )


def check_inputs(config: SearchConfig) -> None:
    """Check what a search reads before any trial runs, so that bad input fails at once with
    its name instead of failing every trial of the seed barrier.

    Raises:
        ConfigError: the seed network is too big for the device (estimated from its code,
            before building it), or ``engine.config`` does not exist.
        DataError: the data set directory, or its ``train.json`` / ``val.json``, is missing,
            a record is malformed (a non-finite, degenerate or outside box…), or an image is
            missing or does not decode (the message names the file and the record).
        WeightsError: ``model.pretrained`` is missing, truncated, not a state dict, or does
            not fit the seed network (the message names the file and the key).
        StorageError: the artifact store cannot be created or written.
    """
    from spnas.data import validate_dataset
    from spnas.data.coco import DatasetSplits
    from spnas.search._checks import check_cost

    check_cost(config)
    engine_config = config.engine.config
    if config.engine.name == "detectron2" and engine_config and not Path(engine_config).is_file():
        raise ConfigError(
            f"'engine.config' is {engine_config!r}, which does not exist (relative paths "
            "in a study YAML are relative to the YAML's folder)"
        )
    validate_dataset(DatasetSplits.from_dir(config.data.dir), config.engine.show_progress)
    if config.model.pretrained:
        load_pretrained_seed(config)
    if config.study.artifacts:
        check_artifact_store(config.study.artifacts)


def create_search_study(config: SearchConfig, storage_url: str | None = None) -> optuna.Study:
    """Create the study (or open it, when it exists with the same configuration).

    The configuration is stored in the study's user attribute ``spnas:config``, so workers
    need only the study name and the storage URL. The inputs are checked first
    (:func:`check_inputs`).

    Raises:
        ConfigError: when a study of that name exists with another configuration.
        DataError, WeightsError, StorageError: see :func:`check_inputs`.
    """
    # Defaults (workdir, storage, artifacts) and relative paths, for configs built in Python
    # (SearchConfig.from_dict); from_yaml already resolved them, and resolving is idempotent.
    config = config.resolved(Path.cwd())
    url = storage_url or config.study.storage
    assert url is not None
    check_inputs(config)
    study = optuna.create_study(
        study_name=config.study.name,
        storage=make_storage(url),
        direction=config.direction,
        load_if_exists=True,
        sampler=SPNASSampler(config),
    )
    stored = study.user_attrs.get(CONFIG_ATTR)
    wanted = config.to_dict()
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, wanted)
        _logger.info("created study %r in %s", config.study.name, redact(url))
    elif stored != wanted:
        changes = _differences(stored, wanted)
        raise ConfigError(
            f"study {config.study.name!r} in {redact(url)} exists with another configuration "
            f"({'; '.join(changes[:5])}): resume it unchanged or choose a new study.name"
        )
    else:
        _logger.info("resuming study %r in %s", config.study.name, redact(url))
    return study


def load_search_study(
    study_name: str, storage_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[optuna.Study, SearchConfig]:
    """Open an existing search study and its stored configuration.

    ``storage_options`` go to :func:`~spnas.storage.make_storage` (e.g. ``heartbeat_interval``,
    ``grace_period``).
    """
    storage = make_storage(storage_url, **(storage_options or {}))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=SPNASSampler())
    except KeyError as exc:
        raise ConfigError(
            f"no study {study_name!r} in {redact(storage_url)}: create it with `spnas search`"
        ) from exc
    values = study.user_attrs.get(CONFIG_ATTR)
    if values is None:
        raise ConfigError(
            f"study {study_name!r} in {redact(storage_url)} is not an spnas search "
            f"(no {CONFIG_ATTR!r} user attribute)"
        )
    return study, SearchConfig.from_dict(values)


class _DashboardFigures:
    """Refresh the study's figures in optuna-dashboard after a completed trial, at most once
    per ``FIGURE_REFRESH_S`` in each worker (the first time that long after it started), and
    once more when the search is done.

    Building the figures takes a second or more of CPU (the FLOPs of the best networks); with
    many workers on few cores, refreshing after every trial slowed the search itself.
    """

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self._last = time.monotonic()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            return
        if time.monotonic() - self._last < FIGURE_REFRESH_S:
            return
        self.publish(study)

    def publish(self, study: optuna.Study) -> None:
        self._last = time.monotonic()
        try:
            from spnas.report import publish_to_dashboard

            publish_to_dashboard(study, self.config)
        except Exception as exc:  # figures are a convenience; the search goes on without
            _logger.warning("dashboard figures not updated (%s: %s)", type(exc).__name__, exc)


#: Seconds between two refreshes of the dashboard figures by one worker.
FIGURE_REFRESH_S = 60.0


#: Errors of a storage call that the next call may not meet (a restarting database server).
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)
#: Storage errors in a row after which a worker stops, and the pause after each.
MAX_STORAGE_OUTAGES = 10
STORAGE_OUTAGE_WAIT_S = 2.0


def run_worker(
    study_name: str,
    storage_url: str,
    *,
    max_trials: int | None = None,
    objective: Any | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> SearchState:
    """Run trials of a search until it is done (or ``max_trials`` were run here).

    Any number of workers may run this at once, on any node that reaches the storage. A trial
    that raises is recorded as failed and the worker goes on; a failed barrier is retried
    (``search.max_barrier_attempts`` times). A storage error (a database restart) pauses the
    worker instead of ending it, up to ``MAX_STORAGE_OUTAGES`` in a row. ``storage_options``
    go to :func:`~spnas.storage.make_storage` (e.g. a shorter ``heartbeat_interval``).

    Returns:
        The search state when the worker stopped.
    """
    study, config = load_search_study(study_name, storage_url, storage_options=storage_options)
    objective = objective or Objective(config)
    figures = _DashboardFigures(config)
    ran = outages = 0
    while True:
        try:
            state = SearchState.from_trials(study.get_trials(deepcopy=False), config)
            if state.done:
                _logger.info("study %r is %s", study_name, state.phase)
                if ran:
                    figures.publish(study)
                return state
            if max_trials is not None and ran >= max_trials:
                return state
            study.optimize(
                objective,
                n_trials=1,
                catch=(Exception,),
                gc_after_trial=True,
                callbacks=[figures],
            )
        except _STORAGE_ERRORS as exc:
            # A query in flight when the database went away. New connections wait for it
            # (make_storage); a trial whose result could not be written goes stale and is
            # retried with its decision.
            outages += 1
            if outages > MAX_STORAGE_OUTAGES:
                raise StorageError(
                    f"storage {redact(storage_url)!r} failed {outages} times in a row; last: "
                    f"{type(exc).__name__}: {redact(str(exc)).splitlines()[0]}"
                ) from None
            _logger.warning(
                "storage error (%s), going on in %.0f s (%d/%d)",
                type(exc).__name__,
                STORAGE_OUTAGE_WAIT_S,
                outages,
                MAX_STORAGE_OUTAGES,
            )
            time.sleep(STORAGE_OUTAGE_WAIT_S)
            continue
        outages = 0
        ran += 1
