"""Creating a search study, and the worker loop that runs its trials."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from spnas.exceptions import ConfigError
from spnas.search._config import CONFIG_ATTR, DATA_ATTR, SearchConfig
from spnas.search._disk import is_disk_full, local_dirs, wait_for_space
from spnas.search._liveness import Pulse, needs_beats
from spnas.search._objective import (
    Objective,
    clean_trial_dir,
    load_pretrained_seed,
)
from spnas.search._optuna import storage_of, trial_id
from spnas.search._resume import resume_failed_search
from spnas.search._sampler import SPNASSampler
from spnas.search._signals import (
    Preempted,
    accept_stop_signals,
    defer_stop_signals,
    preemption_signals,
    requeue_interrupted,
)
from spnas.search._state import SearchState
from spnas.storage import (
    StorageError,
    StorageUnreachableError,
    check_artifact_store,
    hide_password,
    make_artifact_store,
    make_storage,
    redact,
    strip_password,
)

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
        profile=synthetic.profile,
        show_progress=config.engine.show_progress,
    )


def check_inputs(
    config: SearchConfig,
    storage_url: str | None = None,
    *,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check what a search reads before any trial runs, so that bad input fails at once with
    its name instead of failing every trial of the seed barrier. Nothing is written before the
    last check (the artifact store's probe), so refused input leaves nothing on disk.

    The data set is validated record by record and image by image, unless ``data`` is what
    an earlier validation returned (the study's ``spnas:data`` attribute): then only its
    annotation files are compared with that fingerprint
    (:func:`~spnas.data.check_fingerprint`), and no image is opened.

    Returns:
        The data set's fingerprint and class count (``{"files": …, "classes": …}``), to pass
        as ``data`` next time.

    Raises:
        StorageError: the storage URL (``storage_url``, else ``study.storage``) is of no form
            a storage opens; the artifact store cannot be created or written.
        ConfigError: a device this machine does not have; ``engine.config`` does not exist,
            or ``engine.opts`` names an unknown key or a value of the wrong type;
            ``data.lamr_category`` is not a category of the data set; the seed network with
            its heads for the data set's classes is too big for the device (estimated, before
            building it).
        DataError: the data set directory, or its ``train.json`` / ``val.json``, is missing,
            a record is malformed (a non-finite, degenerate or outside box…), the two files'
            categories differ, or an image is missing or does not decode (the message names
            the file and the record); with ``data``: an annotation file changed since.
        WeightsError: ``model.pretrained`` is missing, truncated, not a state dict, or does
            not fit the seed network (the message names the file and the key).
    """
    from spnas.data import check_annotations, check_fingerprint, check_images, dataset_fingerprint
    from spnas.data.coco import DatasetSplits
    from spnas.search._checks import check_cost, check_lamr_category, check_settings

    check_settings(config, storage_url)
    splits = DatasetSplits.from_dir(config.data.dir)
    if data is not None:
        # Validated with the same configuration when the study was created (lamr_category
        # included); the device, and so the cost, is this machine's.
        check_fingerprint(splits, data["files"])
        check_cost(config, data["classes"])
    else:
        # Before reading the files: one changed while being validated is then refused later.
        files = dataset_fingerprint(splits)
        train, val = check_annotations(splits)
        check_lamr_category(config, train.category_ids)
        check_cost(config, len(train.categories))
        for dataset in (train, val):
            check_images(dataset, config.engine.show_progress)
        data = {"files": files, "classes": len(train.categories)}
    if config.model.pretrained:
        load_pretrained_seed(config)
    if config.study.artifacts:
        check_artifact_store(config.study.artifacts)
    return dict(data)


def check_worker_inputs(study: optuna.Study, config: SearchConfig) -> None:
    """What a worker checks before it joins ``study``: :func:`check_inputs` against the data
    set fingerprint stored when the study was created, so that no worker opens the images
    again. A study created before fingerprints were stored is validated here, once, and
    given one.

    Raises:
        DataError: an annotation file changed since the study was created (naming it, its
            size or SHA-256 and the one expected); see :func:`check_inputs` for the rest.
    """
    from spnas.exceptions import DataError

    stored = study.user_attrs.get(DATA_ATTR)
    try:
        data = check_inputs(config, data=stored)
    except DataError as exc:
        if stored is None:
            raise
        raise DataError(
            f"study {study.study_name!r}: {exc}; restore the data set the study was created "
            "with, or create a new study for this one"
        ) from None
    if stored is None:
        study.set_user_attr(DATA_ATTR, data)


def create_search_study(config: SearchConfig, storage_url: str | None = None) -> optuna.Study:
    """Create the study (or open it, when it exists with the same configuration).

    The configuration is stored in the study's user attribute ``spnas:config``, so workers
    need only the study name and the storage URL; its storage URL is stored without the
    password (the attribute is shown by ``optuna studies`` and the dashboard). The inputs are
    checked first (:func:`check_inputs`), and the data set's fingerprint is stored in
    ``spnas:data`` for the workers (:func:`check_worker_inputs`).

    Raises:
        ConfigError: when a study of that name exists with another configuration.
        DataError: when it exists with another data set (an annotation file changed), or
            see :func:`check_inputs`.
        WeightsError, StorageError: see :func:`check_inputs`.
    """
    # Defaults (workdir, storage, artifacts) and relative paths, for configs built in Python
    # (SearchConfig.from_dict); from_yaml already resolved them, and resolving is idempotent.
    config = config.resolved(Path.cwd())
    url = storage_url or config.study.storage
    assert url is not None
    data = check_inputs(config, url)
    study = optuna.create_study(
        study_name=config.study.name,
        storage=make_storage(url),
        direction=config.direction,
        load_if_exists=True,
        sampler=SPNASSampler(config),
    )
    stored = study.user_attrs.get(CONFIG_ATTR)
    wanted = _storable(config.to_dict())
    if stored is not None:
        # Defaults of keys added since the study was created count as unchanged.
        stored = _storable(SearchConfig.from_dict(stored).to_dict())
    if stored is None or (stored == wanted and study.user_attrs[CONFIG_ATTR] != wanted):
        # New, or stored by an older version (with the password, or fewer keys): (re)write it.
        study.set_user_attr(CONFIG_ATTR, wanted)
    if stored is None:
        _logger.info("created study %r in %s", config.study.name, redact(url))
    elif stored != wanted:
        changes = _differences(stored, wanted)
        raise ConfigError(
            f"study {config.study.name!r} in {redact(url)} exists with another configuration "
            f"({'; '.join(changes[:5])}): resume it unchanged or choose a new study.name"
        )
    else:
        _logger.info("resuming study %r in %s", config.study.name, redact(url))
    _store_data(study, config, data)
    return study


def _store_data(study: optuna.Study, config: SearchConfig, data: dict[str, Any]) -> None:
    """Store the fingerprint of the data set just validated (:func:`check_inputs`), for the
    workers; a resumed study's data set must be the one it was created with (a new
    modification time of the same content is stored, so that workers need not hash it)."""
    from spnas.data import check_fingerprint
    from spnas.data.coco import DatasetSplits
    from spnas.exceptions import DataError

    stored = study.user_attrs.get(DATA_ATTR)
    if stored == data:
        return
    if stored is not None:
        try:
            check_fingerprint(DatasetSplits.from_dir(config.data.dir), stored["files"])
        except DataError as exc:
            raise DataError(
                f"study {config.study.name!r} exists with another data set: {exc}; resume it "
                "with that data set or choose a new study.name"
            ) from None
    study.set_user_attr(DATA_ATTR, data)


def _storable(values: dict[str, Any]) -> dict[str, Any]:
    """A config mapping as the study stores it: the storage URL without its password."""
    study = dict(values["study"])
    if study.get("storage"):
        study["storage"] = strip_password(study["storage"])
    return {**values, "study": study}


def load_search_study(
    study_name: str, storage_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[optuna.Study, SearchConfig]:
    """Open an existing search study and its stored configuration.

    ``storage_options`` go to :func:`~spnas.storage.make_storage` (e.g. ``heartbeat_interval``,
    ``grace_period``). The configuration's ``study.storage`` is ``storage_url`` (the study
    stores it without the password).
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
    config = SearchConfig.from_dict(values)
    study_section = dataclasses.replace(config.study, storage=storage_url)
    return study, dataclasses.replace(config, study=study_section)


def enable_verification(
    study: optuna.Study,
    config: SearchConfig,
    *,
    repeats: int | None = None,
    schedule: Mapping[str, Any] | None = None,
) -> SearchConfig:
    """Turn verification on for an existing study (``spnas verify``); returns the new config.

    Only the ``verify`` section changes: workers (new or running) then retrain the seed, every
    round's best and the best SPNet once the parallel phase is over, as part of the search.
    """
    section = dataclasses.replace(
        config.verify,
        enabled=True,
        repeats=config.verify.repeats if repeats is None else repeats,
        schedule=config.verify.schedule if schedule is None else dict(schedule),
    )
    updated = SearchConfig.from_dict({**config.to_dict(), "verify": dataclasses.asdict(section)})
    study.set_user_attr(CONFIG_ATTR, _storable(updated.to_dict()))  # never the password
    return updated


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
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    check_data: bool = False,
) -> SearchState:
    """Run trials of a search until it is done (or ``max_trials`` were run here).

    Any number of workers may run this at once, on any node that reaches the storage. A trial
    that raises is recorded as failed and the worker goes on; a failed barrier is retried
    (``search.max_barrier_attempts`` times, waiting ``search.barrier_backoff_seconds``,
    doubled after each failure, in between). A storage error (a database restart) pauses the
    worker instead of ending it, up to ``MAX_STORAGE_OUTAGES`` in a row. ``storage_options``
    go to :func:`~spnas.storage.make_storage` (e.g. a shorter ``heartbeat_interval``);
    ``callbacks`` are Optuna callbacks called after every trial (``spnas worker`` passes
    :class:`spnas.report.DashboardFigures`). With ``check_data`` the worker checks its data
    set, weights and artifact store against the study (:func:`check_worker_inputs`) before it
    runs a trial of a search that is not done, as ``spnas worker`` does on every node.

    Fault tolerance:

    - a search that stopped as ``failed`` is resumed when a worker starts
      (:func:`~spnas.search.resume_failed_search`);
    - SIGTERM or SIGINT fails the running trial at once, queues its retry and returns
      (:mod:`spnas.search._signals`), so that a preempted worker's trial is taken up by the
      next worker without waiting for the heartbeat grace period;
    - a trial ended by a storage error (in its objective, or writing its result) is failed
      and queued for a retry with its decision once the storage answers again;
    - a trial that failed on a full disk is queued for a retry with its decision at once, and
      the worker waits for free space (up to ``search.disk_full_wait_seconds`` in a row,
      :mod:`spnas.search._disk`) instead of failing the search;
    - the weights no trial can use and the scratch files of killed workers' trials are
      deleted when a worker starts and after a storage outage (:mod:`spnas.search._gc`);
    - on a storage without Optuna heartbeats (``spnas storage-proxy``, a journal file) the
      running trial beats in its system attributes every ``search.beat_seconds``, and waiting
      workers fail and retry a trial whose beat stood still for ``search.beat_grace_seconds``
      (:mod:`spnas.search._liveness`);
    - a worker paused beyond the grace period (its trial failed as stale and retried
      elsewhere) discards its result when it wakes and goes on with a new trial;
    - every trial's weights and scratch files are deleted from its folder when it ends,
      whatever the end (:func:`~spnas.search._objective.clean_trial_dir`).

    Returns:
        The search state when the worker stopped.
    """
    study, config = join_search_study(study_name, storage_url, storage_options=storage_options)
    if check_data and not SearchState.from_trials(study.get_trials(deepcopy=False), config).done:
        check_worker_inputs(study, config)
    objective = objective or Objective(config)
    _collect_garbage(study, config, objective)
    loop = _TrialLoop(study, config, objective, storage_url)
    ran = 0
    ended: SearchState | None = None  # as the last trial left it, replayed by the sampler
    with preemption_signals():
        while True:
            try:
                accept_stop_signals()
                loop.current.clear()
                loop.retry_lost()
                state = ended or SearchState.from_trials(study.get_trials(deepcopy=False), config)
                ended = None  # one trial's replay: a trial that raises below leaves none
                if state.done:
                    _logger.info("study %r is %s", study_name, state.phase)
                    return state
                if max_trials is not None and ran >= max_trials:
                    return state
                # Until the sampler or the objective has the trial (accept_stop_signals).
                defer_stop_signals()
                study.optimize(
                    loop.run,
                    n_trials=1,
                    catch=(Exception,),
                    gc_after_trial=True,
                    callbacks=[loop.clean, *callbacks],
                )
            except Preempted as exc:
                return _preempted(study, config, loop.current, exc)
            except Exception as exc:
                if not loop.recover(exc):
                    raise
                continue
            ended = loop.state_after_trial()
            if loop.counts():
                ran += 1


class _TrialLoop:
    """What one worker keeps between its trials (:func:`run_worker`): the trial it runs, the
    trials a storage error or a full disk ended, and the outages and disk waits in a row."""

    def __init__(
        self, study: optuna.Study, config: SearchConfig, objective: Any, storage_url: str
    ) -> None:
        self.study, self.config, self.objective = study, config, objective
        self.storage_url = storage_url
        self.current: dict[str, int] = {}
        # Trials that a storage error ended, to fail and retry with their decision once it
        # answers.
        self.lost: dict[int, BaseException] = {}
        # Trials that failed on a full disk: retried at once, then the worker waits for space.
        self.disk_full: set[int] = set()
        self.disk_dirs = local_dirs(config.study.workdir, config.study.artifacts)
        # No Optuna heartbeats (the gRPC proxy): the running trial beats in its system
        # attributes.
        self.beats = needs_beats(storage_of(study))
        self.outages = 0
        self.disk_waited = 0.0

    def run(self, trial: optuna.Trial) -> Any:
        """The objective, noting the trial and why it failed (a storage error, a full disk)."""
        current = self.current
        current["id"], current["number"] = trial_id(trial), trial.number
        accept_stop_signals()  # a signal since Optuna made the trial: it fails, and is retried
        pulse = (
            Pulse(storage_of(self.study), current["id"], self.config.search.beat_seconds)
            if self.beats
            else contextlib.nullcontext()
        )
        try:
            with pulse:
                return self.objective(trial)
        except Exception as exc:
            cause = _storage_cause(exc)
            if cause is not None:
                self.lost[current["id"]] = cause
            elif not isinstance(exc, optuna.TrialPruned) and is_disk_full(exc, self.disk_dirs):
                self.disk_full.add(current["id"])
            raise

    def state_after_trial(self) -> SearchState | None:
        """The search state as the trial that just ended left it, as the sampler replayed it
        (:meth:`SPNASSampler.take_state_after_trial`), or ``None`` when the worker must read
        the history: another sampler, or a trial that a storage error or a full disk ended
        (its retry, queued next, changes the history)."""
        sampler = self.study.sampler
        if not isinstance(sampler, SPNASSampler):
            return None
        ended = sampler.take_state_after_trial(self.study)
        return None if self.lost or self.disk_full else ended

    def clean(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        clean_trial_dir(self.config.study.workdir, trial.number)

    def retry_lost(self) -> None:
        """Fail and retry the trials a storage error ended, now that the storage answers."""
        if not self.lost:
            return
        for lost_id in list(self.lost):
            _retry_lost_trial(self.study, lost_id)
            del self.lost[lost_id]
        # Weights whose trial the outage failed (an upload half recorded).
        _collect_garbage(self.study, self.config, self.objective)

    def recover(self, exc: Exception) -> bool:
        """Whether the worker goes on after ``exc`` escaped a trial (``False``: re-raise it)."""
        current = self.current
        cause = _storage_cause(exc)
        if cause is not None:
            # A query in flight when the database went away (Optuna masks a failed
            # write of a result behind its assertion "Should not reach."). New
            # connections wait for it (make_storage); a trial whose result could not
            # be written is retried with its decision once the database answers.
            if "id" in current:
                self.lost.setdefault(current["id"], cause)
                clean_trial_dir(self.config.study.workdir, current["number"])
            # A trial the error ended before its objective ran (in Optuna's ask).
            if isinstance(self.study.sampler, SPNASSampler):
                for lost_id in self.study.sampler.take_unabandoned():
                    self.lost.setdefault(lost_id, cause)
            self.pause(cause)
            return True
        # The objective's own errors are caught by optimize (the trial fails). What
        # escapes it is a write failing because the trial was finished by another
        # worker (failed as stale while this one was paused past the grace period, and
        # retried): the final result, or the decision of a trial that was waiting.
        stale = isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)
        if not (stale or _finished_elsewhere(self.study, current)):
            return False
        _logger.warning(
            "trial %s was declared stale while this worker was paused; its result is "
            "discarded and its retry, if any, trains it again",
            current.get("number", "(deciding)"),
        )
        if "number" in current:
            clean_trial_dir(self.config.study.workdir, current["number"])
        return True

    def counts(self) -> bool:
        """After a trial: whether it counts as run here. One that a full disk or a storage
        error ended (caught by optimize: the trial was told failed) does not; the worker
        waits for space, or for the storage, first."""
        current = self.current
        if current.get("id") in self.disk_full:
            self.disk_full.clear()
            _retry_lost_trial(self.study, current["id"])
            self.disk_waited += wait_for_space(
                self.disk_dirs, self.disk_waited, self.config.search.disk_full_wait_seconds
            )
            return False
        cause = self.lost.get(current.get("id", -1))
        if cause is not None:
            self.pause(cause)
            return False
        self.outages = 0
        self.disk_waited = 0.0
        return True

    def pause(self, cause: BaseException) -> None:
        self.outages += 1
        _pause_for_storage(cause, self.outages, self.storage_url)


def join_search_study(
    study_name: str, storage_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[optuna.Study, SearchConfig]:
    """Open a search study as a worker joins it: :func:`load_search_study`, then resume the
    search if it stopped as failed (:func:`~spnas.search.resume_failed_search`).

    A database that does not answer (down, starting or restarting) pauses the caller, as an
    outage mid-search does (up to ``MAX_STORAGE_OUTAGES`` in a row), instead of ending it:
    workers of a cluster start beside their database, or meet its restart while they start.
    """
    outages = 0
    while True:
        try:
            study, config = load_search_study(
                study_name, storage_url, storage_options=storage_options
            )
            resume_failed_search(study, config)
            return study, config
        except StorageUnreachableError as exc:
            cause: BaseException | None = exc
        except Exception as exc:
            cause = _storage_cause(exc)
            if cause is None:
                raise
        outages += 1
        _pause_for_storage(cause, outages, storage_url)


def _storage_cause(exc: BaseException) -> BaseException | None:
    """The storage error that ``exc`` was raised while handling, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _STORAGE_ERRORS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _collect_garbage(study: optuna.Study, config: SearchConfig, objective: Any) -> None:
    """Delete what killed workers and storage outages left (:mod:`spnas.search._gc`).

    Housekeeping: an error here is logged and the worker goes on.
    """
    from spnas.search._gc import collect_garbage

    store = getattr(objective, "artifact_store", None)
    try:
        if store is None and config.study.artifacts:
            store = make_artifact_store(config.study.artifacts)
        if store is not None:
            collect_garbage(study, config, store)
    except Exception as exc:
        _logger.warning(
            "could not delete leftovers (%s: %s); `spnas gc` does it later",
            type(exc).__name__,
            hide_password(str(exc), config.study.storage or ""),
        )


def _retry_lost_trial(study: optuna.Study, trial_id: int) -> None:
    """Fail a trial that a storage error ended, and queue its retry with its decision.

    The failure is the database's, not the network's: counted as a failed attempt, it would
    make the sampler decide the step again (or give up on a barrier). Nothing is done for a
    trial whose result was written after all, or that another worker already retried.
    """
    retried = requeue_interrupted(study, trial_id)
    if retried is not None:
        _logger.warning(
            "trial %d ended on a storage error; queued for a retry with its decision", retried
        )


def _pause_for_storage(exc: BaseException, outages: int, storage_url: str) -> None:
    """Wait out a storage error, or raise once ``MAX_STORAGE_OUTAGES`` came in a row."""
    if outages > MAX_STORAGE_OUTAGES:
        raise StorageError(
            f"storage {redact(storage_url)!r} failed {outages} times in a row; "
            f"last: {type(exc).__name__}: "
            f"{hide_password(str(exc), storage_url).splitlines()[0]}"
        ) from None
    _logger.warning(
        "storage error (%s), going on in %.0f s (%d/%d)",
        type(exc).__name__,
        STORAGE_OUTAGE_WAIT_S,
        outages,
        MAX_STORAGE_OUTAGES,
    )
    time.sleep(STORAGE_OUTAGE_WAIT_S)


def _finished_elsewhere(study: optuna.Study, current: Mapping[str, int]) -> bool:
    """Whether this worker's current trial was finished by another worker: failed as stale,
    or run to its end by a second worker that took the same queued trial (possible on a SQLite
    storage not opened by :func:`~spnas.storage.make_storage`, whose claims are not atomic)."""
    if "id" not in current:
        return False
    try:
        return storage_of(study).get_trial(current["id"]).state.is_finished()
    except KeyError:  # the database lost the trial (see requeue_interrupted): nothing to do
        return True


def _preempted(
    study: optuna.Study, config: SearchConfig, current: Mapping[str, int], exc: Preempted
) -> SearchState:
    """Re-queue the trial a signal interrupted; the state to return from :func:`run_worker`."""
    import signal

    retried = requeue_interrupted(study, current.get("id"))
    if "number" in current:
        clean_trial_dir(config.study.workdir, current["number"])
    _logger.warning(
        "stopped by %s%s",
        signal.Signals(exc.signum).name,
        "" if retried is None else f"; trial {retried} failed and queued for a retry",
    )
    return SearchState.from_trials(study.get_trials(deepcopy=False), config)
