"""The objective: train and evaluate the network the sampler decided on."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from spnas._io import atomic_write, sha256_file
from spnas._optional import require
from spnas.data.coco import DatasetSplits
from spnas.engines import DataSpec, Engine, InitWeights, TrialDiverged, build_engine
from spnas.exceptions import MissingDependencyError, WeightsError
from spnas.modeling.torchvision_weights import load_tensor_file
from spnas.search._artifacts import (
    WEIGHTS_ATTR,
    WEIGHTS_SHA256_ATTR,
    remove_weights,
    upload_weights,
)
from spnas.search._config import SearchConfig
from spnas.search._cost import CPU_SECONDS_ATTR, cpu_seconds
from spnas.search._notes import trial_note
from spnas.search._optuna import storage_of, trial_id
from spnas.search._retrain import keep_sidecar, pretrain_backbone, retrain
from spnas.search._sampler import get_decision
from spnas.search._signals import raise_if_preempted
from spnas.search._state import (
    DIVERGED_ATTR,
    DIVERGED_ITERATION_ATTR,
    DIVERGED_LOSS_ATTR,
    SEED_ATTR,
    UNPRUNABLE_KINDS,
    UNTRAINED_KINDS,
    Decision,
    SearchState,
    TrialKind,
)
from spnas.search._stats import noise_sigma
from spnas.storage import StorageError, make_artifact_store, redact

if TYPE_CHECKING:
    from spnas.modeling import SerialNet

_logger = logging.getLogger(__name__)


class OptunaReporter:
    """Forwards a trial's evaluations to Optuna, so any pruner can stop it.

    Barriers, controls and verification trials report their values but are never pruned:
    the search cannot go on, or judge a round, without them. Nor is the evaluation at the
    last iteration: stopping there saves no training and would throw a finished result away
    (Optuna's default MedianPruner, which ``spnas worker`` studies get, pruned 5 of 24
    candidates so in a benchmark search whose trials evaluate only at their end, and the
    search lost their values).
    """

    def __init__(self, trial: optuna.Trial, metric: str, prunable: bool) -> None:
        self.trial = trial
        self.metric = metric
        self.prunable = prunable
        #: The training's last iteration, as the engine's progress reports say.
        self.total: int | None = None

    def progress(self, iteration: int, total: int, loss: float) -> None:
        self.total = total
        # A stop signal whose exception was lost (see spnas.search._signals) stops the trial
        # here, at the next iteration.
        raise_if_preempted()

    def evaluation(self, iteration: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, iteration)
        last = self.total is not None and iteration >= self.total
        if self.prunable and not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.3f} at iteration {iteration}")


def fetch_weights(study: optuna.Study, number: int, artifact_store: Any, path: Path) -> Path:
    """Download the trained weights of trial ``number`` to ``path``.

    The download goes to a temporary file renamed into place, and its SHA-256 must match the
    one the trial stored (``spnas:weights_sha256``): a partial or altered artifact is fetched
    once more, then refused, never used. (Trials from before checksums were stored have
    none and are not checked.)

    Raises:
        WeightsError: when the trial has none, they were deleted from the store, cannot be
            read from it, or fail their checksum twice.
    """
    trial = study.get_trials(deepcopy=False)[number]
    artifact_id = trial.user_attrs.get(WEIGHTS_ATTR)
    if artifact_id is None:
        raise WeightsError(f"trial {number} has no weights ({WEIGHTS_ATTR} is unset)")
    expected = trial.user_attrs.get(WEIGHTS_SHA256_ATTR)
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            download_artifact(
                artifact_store=artifact_store, artifact_id=artifact_id, file_path=str(tmp)
            )
        except ArtifactNotFound as exc:
            raise WeightsError(
                f"weights of trial {number} (artifact {artifact_id}) are gone from the store"
            ) from exc
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise WeightsError(
                f"weights of trial {number} (artifact {artifact_id}) could not be downloaded "
                f"to {str(path)!r}: {exc}"
            ) from exc
        actual = sha256_file(tmp)
        if expected is None or actual == expected:
            os.replace(tmp, path)
            return path
        tmp.unlink()
        _logger.warning(
            "weights of trial %d (artifact %s): checksum mismatch (attempt %d of 2)",
            number,
            artifact_id,
            attempt,
        )
    raise WeightsError(
        f"weights of trial {number} (artifact {artifact_id}) fail their SHA-256 check twice "
        f"(expected {expected}, got {actual}): the stored file is truncated or altered"
    )


def load_pretrained_seed(config: SearchConfig) -> SerialNet:
    """The seed network with the torchvision weights of ``model.pretrained``.

    Raises:
        WeightsError: naming the file when it is missing, unreadable or does not fit.
    """
    from spnas.modeling import SerialNet, load_torchvision_resnet

    net = SerialNet(
        config.seed_arch,
        base_width=config.model.width,
        stem=config.model.stem,
        norm=config.model.norm,
        xb_groups=config.model.xb_groups,
    )
    return load_torchvision_resnet(net, config.model.pretrained)


class Objective:
    """Trains the trial's network and returns its metric (AP by default).

    Reads the decision, fetches the parent's weights from the artifact store, applies the
    morphism with weight inheritance (inside the engine), trains and evaluates, uploads the
    child's weights, records user attributes for the dashboard (``arch``, ``parallel``,
    ``kind``, ``round``, ``parent``, ``ops``, ``gmacs``, ``params_m``, ``AP``, ``AP50``,
    ``train_s``, ``inherited_fraction``; ``cpu_s``, the trial's CPU seconds, on pruned and
    diverged trials too: :mod:`spnas.search._cost`), and deletes weights that can no longer be parents
    (all but ``search.keep_top_k`` per phase and the current parents). A training that
    diverges ends the trial PRUNED with where it diverged (:func:`record_divergence`), so
    that it is not retried. Training keeps resumable checkpoints in the decision's folder
    (:func:`checkpoint_dir`): a retry of the decision resumes from them, and they are deleted
    once the trial completed, was pruned or diverged.

    Args:
        config: the search configuration.
        engine: the engine; by default built from ``config.engine``.
        artifact_store: where weights go; by default ``config.study.artifacts``.
    """

    def __init__(
        self,
        config: SearchConfig,
        *,
        engine: Engine | None = None,
        artifact_store: Any | None = None,
    ) -> None:
        self.config = config
        self.engine = engine or build_search_engine(config)
        self.artifact_store = artifact_store or make_artifact_store(config.study.artifacts)
        self._splits: DatasetSplits | None = None
        self._num_classes: int | None = None
        # Classification pretraining steps of the running trial (seed, reignition).
        self._pretrain_iters = 0

    @property
    def workdir(self) -> Path:
        return Path(self.config.study.workdir)

    def data(self) -> DataSpec:
        if self._splits is None:
            self._splits = DatasetSplits.from_dir(self.config.data.dir)
            self._num_classes = len(self._splits.load("train", check_images=False).categories)
        return DataSpec(self._splits, self.config.data.metric, self.config.data.lamr_category)

    def __call__(self, trial: optuna.Trial) -> float:
        decision = get_decision(trial)
        if decision.kind in UNTRAINED_KINDS:
            raise optuna.TrialPruned(f"nothing to train ({decision.kind})")
        cpu_started = cpu_seconds()
        for key, value in (
            ("kind", decision.kind.value),
            ("arch", str(decision.arch)),
            ("parallel", None if decision.parallel is None else str(decision.parallel)),
            ("round", decision.round),
            ("parent", decision.parent),
            ("ops", list(decision.ops)),
        ):
            trial.set_user_attr(key, value)
        data = self.data()
        assert self._num_classes is not None
        out_dir = trial_dir(self.workdir, trial.number)
        out_dir.mkdir(parents=True, exist_ok=True)
        # A re-evaluation (``repeat``) is judged on its value: never pruned.
        prunable = decision.kind not in UNPRUNABLE_KINDS and not decision.repeat
        reporter = OptunaReporter(trial, self.config.data.metric, prunable=prunable)
        self._pretrain_iters = 0
        seed = trial_seed(self.config, decision)
        trial.set_user_attr(SEED_ATTR, seed)
        # Kept across retries of the decision (preemption, a dead worker, a storage error),
        # deleted once it is done: complete, pruned or diverged.
        checkpoints = checkpoint_dir(self.workdir, decision, seed)
        try:
            if decision.kind == TrialKind.VERIFY:
                retrained = retrain(
                    self.config,
                    decision.arch,
                    decision.parallel,
                    seed=seed,
                    out_dir=out_dir,
                    schedule=self.config.verify_schedule,
                    engine=self.engine,
                    data=data,
                    reporter=reporter,
                    checkpoint_dir=checkpoints,
                )
                result = retrained.detection
                self._pretrain_iters = retrained.iterations - result.iterations
            else:
                init = self.init_weights(trial, decision, out_dir, checkpoints)
                spec = self.config.model_spec(decision.arch, decision.parallel, self._num_classes)
                schedule = (
                    self.config.final_schedule
                    if decision.kind == TrialKind.FINAL
                    else self.config.schedule
                )
                schedule = dataclasses.replace(schedule, seed=seed)
                result = self.engine.train_eval(
                    spec,
                    init,
                    schedule,
                    data,
                    reporter,
                    out_dir=out_dir,
                    checkpoint_dir=checkpoints,
                )
        except optuna.TrialPruned:
            remove_checkpoints(checkpoints)
            trial.set_user_attr(CPU_SECONDS_ATTR, cpu_seconds() - cpu_started)
            raise
        except TrialDiverged as exc:
            remove_checkpoints(checkpoints)
            trial.set_user_attr(CPU_SECONDS_ATTR, cpu_seconds() - cpu_started)
            raise record_divergence(trial, decision, exc, seed) from exc
        if decision.kind != TrialKind.VERIFY:
            # Verification retrains from scratch: its weights are never a parent.
            check_still_running(trial)
            self.upload(trial, Path(result.weights))
        value = result.metric(self.config.data.metric)
        attrs = {
            "gmacs": result.gmacs,
            "params_m": result.params_m,
            "AP": result.metrics.get("AP"),
            "AP50": result.metrics.get("AP50"),
            "train_s": result.train_seconds,
            "images_per_s": result.images_per_second,
            "inherited_fraction": result.inherited_fraction,
            "train_iters": result.iterations,
            "pretrain_iters": self._pretrain_iters,
            "metrics": result.to_dict()["metrics"],
            # The weights' upload included; pruning old weights below is not the trial's work.
            CPU_SECONDS_ATTR: cpu_seconds() - cpu_started,
        }
        if decision.kind == TrialKind.CONTROL:
            attrs["noise_sigma"] = _control_noise(trial, decision, value)
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        _save_note(trial, decision, attrs, value)
        # The store holds the weights now; the trial folder keeps logs and metrics only.
        for path in out_dir.glob("*.pth"):
            path.unlink()
        remove_checkpoints(checkpoints)
        self.prune_weights(trial.study, keep={trial.number})
        return value

    # ------------------------------------------------------------------ weights
    def upload(self, trial: optuna.Trial, weights: Path) -> str:
        """Upload ``weights`` to the artifact store and record them in the trial (its user
        attributes ``spnas:weights`` and ``spnas:weights_sha256``); returns the artifact id.

        Raises:
            StorageError: naming the artifact location and the file when the upload fails
                (a full disk, a missing bucket): the trial fails, and its barrier is retried
                after a back-off (``search.barrier_backoff_seconds``).
        """
        digest = sha256_file(weights)
        try:
            return upload_weights(trial, self.artifact_store, weights, digest)
        except OSError as exc:
            raise StorageError(
                f"trial {trial.number}: uploading {str(weights)!r} to the artifact store "
                f"{redact(str(self.config.study.artifacts))!r} failed: {exc}"
            ) from exc

    def fetch(self, study: optuna.Study, number: int, path: Path) -> Path:
        """Download trial ``number``'s weights to ``path``."""
        return fetch_weights(study, number, self.artifact_store, path)

    def init_weights(
        self,
        trial: optuna.Trial,
        decision: Decision,
        out_dir: Path,
        checkpoints: Path | None = None,
    ) -> InitWeights | None:
        """The weights the trial starts from (docs/design.md §4); a reignition pretrains in
        ``checkpoints`` (see :meth:`reignite`)."""
        study = trial.study
        if decision.kind == TrialKind.SEED:
            return InitWeights(self.seed_backbone())
        assert decision.parent is not None
        parent_path = self.fetch(study, decision.parent, out_dir / "parent.pth")
        parent = get_decision(study.get_trials(deepcopy=False)[decision.parent])
        if decision.kind == TrialKind.REIGNITE:
            return InitWeights(self.reignite(decision, parent_path, out_dir, checkpoints))
        return InitWeights(
            parent_path,
            parent_arch=parent.arch,
            parent_parallel=parent.parallel,
            ops=decision.ops,
        )

    def seed_backbone(self) -> Path:
        """θ0: the seed network's pretrained backbone (torchvision file or crop pretraining)."""
        config = self.config
        path = self.workdir / "seed_backbone.pth"
        if path.is_file():
            try:
                load_tensor_file(path, "seed backbone")
                return path
            except WeightsError as exc:  # written by an older version killed mid-write
                _logger.warning("%s; making it again", exc)
                path.unlink(missing_ok=True)
        if config.model.pretrained:
            net = load_pretrained_seed(config)
            return atomic_write(path, functools.partial(torch.save, net.state_dict()))
        return self._pretrain(config.seed_arch, path, init=None)

    def _pretrain(self, arch: Any, out: Path, init: Path | None) -> Path:
        pretrained = pretrain_backbone(self.config, arch, out, init=init)
        self._pretrain_iters += pretrained.iterations
        return pretrained.weights

    def reignite(
        self,
        decision: Decision,
        parent_path: Path,
        out_dir: Path,
        checkpoints: Path | None = None,
    ) -> Path:
        """Pretrain the round's best backbone, put it back into its detector's weights.

        The pretraining writes its backbone and its epoch checkpoint (``<out>.ckpt``) in
        ``checkpoints`` (the decision's checkpoint folder; ``out_dir`` when ``None``): a
        retry of the decision resumes it at the last finished epoch.
        """
        from spnas.modeling import split_backbone

        state = load_tensor_file(parent_path, "parent weights")
        prefix, backbone = split_backbone(state)
        init = out_dir / "parent_backbone.pth"
        atomic_write(init, functools.partial(torch.save, backbone))
        out = (checkpoints or out_dir) / "reignited_backbone.pth"
        pretrained = self._pretrain(decision.arch, out, init)
        keep_sidecar(pretrained, out_dir)
        fresh = load_tensor_file(pretrained, "reignited backbone")
        state.update({prefix + k: v for k, v in fresh.items()})
        composed = out_dir / "reignited.pth"
        atomic_write(composed, functools.partial(torch.save, state))
        return composed

    def prune_weights(self, study: optuna.Study, keep: set[int]) -> None:
        """Delete weights that can no longer be parents (keeps the top-k of each phase), and
        those of failed trials (a result lost to a storage error: no trial starts from them)."""
        trials = study.get_trials(deepcopy=False)
        # Ranked as the sampler ranks them: by the study's direction.
        state = SearchState.from_trials(trials, self.config, study.direction)
        keep = set(keep)
        for best in (
            state.parent,
            state.init_from,
            state.round_best,
            state.best_serial,
            state.best_parallel,
        ):
            if best is not None:
                keep.add(best.number)
        keep.update(r.decision.parent for r in state.records if r.running and r.decision.parent)
        # The first control of the running round: it stands for the round's reference (the
        # mean of its noise repeats) and may become the round's best once its repeats finished.
        start = state.init_from
        keep.update(
            r.number
            for r in state.records
            if r.decision.kind == TrialKind.CONTROL
            and not r.decision.repeat
            and start is not None
            and r.decision.parent == start.number
        )
        # A would-be winner whose re-evaluation is decided next or runs (noise-aware
        # acceptance) may become the parent: its weights stay until it is judged.
        judging = {
            r.decision.candidate
            for r in state.records
            if r.running and r.decision.repeat and r.decision.kind != TrialKind.CONTROL
        }
        if state.pending is not None and state.pending.kind in (
            TrialKind.SERIAL,
            TrialKind.PARALLEL,
        ):
            judging.add(state.pending.candidate)
        keep.update(
            r.number
            for r in state.records
            if r.decision.kind in (TrialKind.SERIAL, TrialKind.PARALLEL)
            and not r.decision.repeat
            and r.decision.candidate in judging
        )
        reverse = state.direction == "maximize"
        serial = (TrialKind.SEED, TrialKind.SERIAL, TrialKind.REIGNITE)
        parallel = (TrialKind.PARALLEL_SEED, TrialKind.PARALLEL, TrialKind.FINAL)
        for phase in (serial, parallel):
            done = [r for r in state.records if r.decision.kind in phase and r.value is not None]
            done.sort(key=lambda r: r.value, reverse=reverse)
            keep.update(r.number for r in done[: self.config.search.keep_top_k])
        stale = [
            (trial, trial.user_attrs[WEIGHTS_ATTR])
            for trial in trials
            if WEIGHTS_ATTR in trial.user_attrs
            and (
                trial.state == TrialState.FAIL
                or (trial.state == TrialState.COMPLETE and trial.number not in keep)
            )
        ]
        remove_weights(study, stale, self.artifact_store)


def trial_seed(config: SearchConfig, decision: Decision) -> int:
    """The training seed of ``decision``: the same for every retry of it."""
    if decision.kind == TrialKind.VERIFY:
        return config.search.seed + (decision.repeat or 0)
    if decision.kind == TrialKind.FINAL:
        return config.final_schedule.seed
    # A control's noise repeat or a candidate's re-evaluation (``repeat`` k): the same
    # network and weights, another training seed.
    return config.schedule.seed + (decision.repeat or 0)


def checkpoint_dir(workdir: str | Path, decision: Decision, seed: int) -> Path:
    """The folder of ``decision``'s resumable training checkpoints, trained with ``seed``:
    ``workdir/checkpoints/<key>``, ``key`` a hash of both.

    Keyed by what is trained, not by the trial number: a retry (a new trial with the same
    decision) finds the checkpoints of the attempt it replaces.
    """
    text = json.dumps({**decision.to_attrs(), "seed": seed}, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    return Path(workdir) / CHECKPOINTS / key


def remove_checkpoints(folder: Path) -> bool:
    """Delete a decision's checkpoint folder (its training is done); whether there was one."""
    if not folder.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def record_divergence(
    trial: optuna.Trial, decision: Decision, exc: TrialDiverged, seed: int
) -> optuna.TrialPruned:
    """Record a diverged training on ``trial``; the :class:`optuna.TrialPruned` to raise.

    A divergence is a property of the network, seed and schedule, not a fault: retried, it
    diverges again. So the trial ends PRUNED (not FAIL, which would be retried) with user
    attributes saying where: ``diverged`` (True), ``diverged_iteration``, ``diverged_loss``
    and ``seed``. The state machine reads them: a verification repeat counts as failed, a
    candidate as no improvement, a barrier or control ends the search as ``failed``.
    """
    seed = exc.seed if exc.seed is not None else seed
    trial.set_user_attr(DIVERGED_ATTR, True)
    trial.set_user_attr(DIVERGED_ITERATION_ATTR, exc.iteration)
    trial.set_user_attr(DIVERGED_LOSS_ATTR, exc.loss)
    trial.set_user_attr(SEED_ATTR, seed)
    what = decision.kind.value + (
        f" repeat {decision.repeat}" if decision.repeat is not None else ""
    )
    _logger.warning("trial %d (%s) diverged, not retried: %s", trial.number, what, exc)
    return optuna.TrialPruned(f"diverged: {exc}")


def _control_noise(trial: optuna.Trial, decision: Decision, value: float) -> float | None:
    """σ_trial of the round so far: the spread of its finished control repeats and this one
    (a user attribute of the control, so that optuna-dashboard shows the noise)."""
    values = [value]
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        mine = Decision.of(other)
        if (
            mine is not None
            and mine.kind == TrialKind.CONTROL
            and mine.parent == decision.parent
            and (mine.parallel is None) == (decision.parallel is None)
            and other.value is not None
        ):
            values.append(other.value)
    return noise_sigma(values)


def _save_note(
    trial: optuna.Trial, decision: Decision, attrs: Mapping[str, Any], value: float
) -> None:
    # The dashboard note is a convenience: a failure to write it must not fail the trial.
    try:
        dashboard = require(
            "optuna_dashboard",
            package="optuna-dashboard",
            extra="dashboard",
            purpose="a trial's dashboard note",
        )
        dashboard.save_note(trial, trial_note(decision, attrs, value))
    except MissingDependencyError as exc:
        _warn_once(f"no dashboard notes: {exc}")
    except Exception as exc:
        _logger.warning(
            "trial %d: no dashboard note (%s: %s)", trial.number, type(exc).__name__, exc
        )


@functools.cache
def _warn_once(message: str) -> None:
    """Log ``message`` once per process (a missing optional package, not a fault per trial)."""
    _logger.warning(message)


def build_search_engine(config: SearchConfig) -> Engine:
    """The engine a study's YAML names, built through the registry from its section."""
    section = config.engine
    # The keys the section sets; left out, an engine's own defaults apply.
    options = {
        field.name: getattr(section, field.name)
        for field in dataclasses.fields(section)
        if field.name != "name" and getattr(section, field.name) != field.default
    }
    return build_engine(section.name, **options)


class StaleTrialError(RuntimeError):
    """The trial was finished by someone else (declared stale while this worker was paused)."""


def check_still_running(trial: optuna.Trial) -> None:
    """Raise :class:`StaleTrialError` when ``trial`` is no longer RUNNING in the storage.

    A worker paused (SIGSTOP, a frozen VM) beyond the heartbeat grace period finds its trial
    failed as stale and retried by another worker when it wakes: its result is discarded
    before anything is uploaded, and the worker goes on with a new trial.
    """
    state = storage_of(trial.study).get_trial(trial_id(trial)).state
    if state != TrialState.RUNNING:
        raise StaleTrialError(
            f"trial {trial.number} is {state.name} in the storage (declared stale while this "
            "worker was paused): its result is discarded, its retry trains it again"
        )


#: The folder of ``study.workdir`` that holds the decisions' checkpoint folders.
CHECKPOINTS = "checkpoints"

#: Files of a trial's folder that only matter while it runs (weights, pretraining
#: checkpoints, partial writes); logs and metrics stay.
_SCRATCH = ("*.pth", "*.pth.ckpt", "*.tmp")


def trial_dir(workdir: str | Path, number: int) -> Path:
    """The folder of trial ``number``: its logs, metrics and, while it runs, its weights."""
    return Path(workdir) / "trials" / f"{number:05d}"


def clean_trial_dir(workdir: str | Path, number: int) -> int:
    """Delete the weights and scratch files left in trial ``number``'s folder; returns how
    many files were deleted.

    Run after every trial, whatever its end (complete, pruned, failed, interrupted): the
    artifact store keeps the weights that matter, so the work directory's disk use does not
    grow with the number of trials.
    """
    out_dir = trial_dir(workdir, number)
    if not out_dir.is_dir():
        return 0
    deleted = 0
    for pattern in _SCRATCH:
        for path in out_dir.rglob(pattern):
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted
