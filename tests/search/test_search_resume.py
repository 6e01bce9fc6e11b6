"""Trials that survive preemption: checkpoints keyed by the decision, resumed by its retry.

- A worker training a real detectron2 trial gets SIGTERM after its checkpoint: the trial is
  failed and re-queued, its checkpoint folder (``workdir/checkpoints/<key of decision and
  seed>``) is kept; the retry (a new trial number, the same decision) resumes at the
  checkpointed iteration and ends with exactly the value of an uninterrupted run of the same
  seed; its checkpoint folder is deleted once it completed.
- A pruned or diverged trial's checkpoints are deleted (both are final).
- A reignition interrupted mid-pretraining resumes at its last finished epoch (its ``.ckpt``
  lies in the decision's checkpoint folder, not in the trial's).
- Garbage collection keeps the checkpoints of decisions that a trial runs or waits to run and
  deletes those of decisions done elsewhere, or abandoned for longer than ``min_age``.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from search_doubles import SEED_ARCH, FakeEngine, make_config, reignite_decision

from spnas.engines import TrialDiverged
from spnas.engines.detectron2 import Detectron2Engine, config_path
from spnas.search import Decision, Objective, TrialKind, create_search_study, run_worker
from spnas.search._gc import collect_stale_checkpoints
from spnas.search._objective import checkpoint_dir, trial_seed
from spnas.search._signals import Preempted

#: 8 iterations, a checkpoint every 2 (a quarter of the run); SIGTERM at iteration 5, after
#: the checkpoint of iteration 4.
ITERS = 8
SIGTERM_AT = 5


class ProgressLog:
    """A reporter between the engine and the objective's: records every progress report and
    sends SIGTERM to this process at ``sigterm_at`` (the worker's handler then stops the
    trial, as a cluster's preemption would)."""

    def __init__(self, inner: Any, sigterm_at: int | None) -> None:
        self.inner = inner
        self.sigterm_at = sigterm_at
        self.iterations: list[int] = []

    def progress(self, iteration: int, total: int, loss: float) -> None:
        self.iterations.append(iteration)
        if self.sigterm_at is not None and iteration >= self.sigterm_at:
            self.sigterm_at = None
            os.kill(os.getpid(), signal.SIGTERM)
        self.inner.progress(iteration, total, loss)

    def evaluation(self, iteration: int, metrics: Any) -> None:
        self.inner.evaluation(iteration, metrics)


class LoggedDetectron2(Detectron2Engine):
    """The detectron2 engine, its progress logged per trial (and SIGTERM at an iteration)."""

    def __init__(self, sigterm_at: int | None = None) -> None:
        super().__init__(config_path("faster_rcnn_spnet_fpn_cpu.yaml"), show_progress=False)
        self.sigterm_at = sigterm_at
        self.logs: list[ProgressLog] = []

    def train_eval(self, spec, init_weights, schedule, data, reporter=None, out_dir="output", **kw):
        log = ProgressLog(reporter, self.sigterm_at)
        self.logs.append(log)
        return super().train_eval(spec, init_weights, schedule, data, log, out_dir, **kw)


def _config(root: Path, assets: Path):
    return make_config(
        root,
        "resume",
        assets,
        engine={"name": "detectron2", "config": str(config_path("faster_rcnn_spnet_fpn_cpu.yaml"))},
        schedule={"iters": ITERS, "warmup_iters": 2, "seed": 7},
    )


def _run_one(config, engine: LoggedDetectron2) -> None:
    run_worker(
        config.study.name,
        config.study.storage,
        objective=Objective(config, engine=engine),
        max_trials=1,
    )


def test_a_preempted_detectron2_trial_resumes_and_ends_as_an_uninterrupted_one(
    search_assets: Path, tmp_path: Path
) -> None:
    # The reference: the first trial of the same study, never interrupted.
    reference = _config(tmp_path / "reference", search_assets)
    create_search_study(reference)
    _run_one(reference, LoggedDetectron2())
    expected = optuna.load_study(
        study_name=reference.study.name, storage=reference.study.storage
    ).trials[0]
    assert expected.state == TrialState.COMPLETE

    config = _config(tmp_path / "preempted", search_assets)
    study = create_search_study(config)
    stopped = LoggedDetectron2(sigterm_at=SIGTERM_AT)
    _run_one(config, stopped)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.WAITING
    decision = Decision.of(first)
    assert decision is not None and Decision.of(retry) == decision
    folder = checkpoint_dir(config.study.workdir, decision, trial_seed(config, decision))
    assert stopped.logs[0].iterations == list(range(1, SIGTERM_AT + 1))
    # Kept after the interruption: the latest checkpoint, after iteration 4.
    assert sorted(p.name for p in folder.iterdir()) == ["last_checkpoint", "model_0000003.pth"]

    resumed = LoggedDetectron2()
    _run_one(config, resumed)
    retried = study.trials[retry.number]
    assert retried.state == TrialState.COMPLETE
    assert resumed.logs[0].iterations == list(range(SIGTERM_AT, ITERS + 1)), (
        "the retry resumes after the checkpointed iteration"
    )
    assert retried.value == expected.value, (
        f"resumed {retried.value} != uninterrupted {expected.value}"
    )
    assert retried.user_attrs["train_iters"] == ITERS
    assert not folder.exists(), "the decision completed: its checkpoints are deleted"


class EndingEngine(FakeEngine):
    """Writes a checkpoint where it is told to, then ends the trial with ``end``: pruned at
    its first evaluation, or diverged."""

    def __init__(self, end: BaseException) -> None:
        super().__init__()
        self.end = end
        self.folders: list[Path] = []

    def train_eval(self, spec, init_weights, schedule, data, reporter=None, out_dir="output", **kw):
        folder = Path(kw["checkpoint_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "last_checkpoint").write_text("model_0000000.pth")
        self.folders.append(folder)
        raise self.end


@pytest.mark.parametrize(
    "end",
    [
        optuna.TrialPruned("AP 0.0 at iteration 1"),
        TrialDiverged("loss nan at iteration 1", iteration=1, loss=math.nan, seed=0),
    ],
    ids=["pruned", "diverged"],
)
def test_a_trial_ended_for_good_deletes_its_checkpoints(
    search_assets: Path, tmp_path: Path, end: BaseException
) -> None:
    config = make_config(tmp_path, "ended", search_assets)
    study = create_search_study(config)
    engine = EndingEngine(end)
    run_worker(
        config.study.name,
        config.study.storage,
        objective=Objective(config, engine=engine),
        max_trials=1,
    )
    assert study.trials[0].state == TrialState.PRUNED
    assert engine.folders and not engine.folders[0].exists()


def _trial(state: TrialState, decision: Decision) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        value=1.0 if state == TrialState.COMPLETE else None,
        system_attrs=decision.to_attrs(),
    )


@pytest.mark.parametrize("age_s", [0.0, 7200.0])
def test_gc_keeps_the_checkpoints_of_decisions_that_run_or_wait(
    search_assets: Path, tmp_path: Path, age_s: float
) -> None:
    config = make_config(tmp_path, "gc", search_assets)
    study = optuna.create_study(storage=config.study.storage, study_name="gc")
    running, waiting, done, failed = (
        Decision(TrialKind.SERIAL, arch=None, parent=0, ops=(op,), round=1)
        for op in ("a", "b", "c", "d")
    )
    for state, decision in (
        (TrialState.RUNNING, running),
        (TrialState.WAITING, waiting),
        (TrialState.COMPLETE, done),
        (TrialState.FAIL, failed),
    ):
        study.add_trial(_trial(state, decision))
    folders = {}
    for name, decision in (("running", running), ("waiting", waiting), ("done", done)):
        folders[name] = checkpoint_dir(config.study.workdir, decision, trial_seed(config, decision))
    folders["failed"] = checkpoint_dir(config.study.workdir, failed, trial_seed(config, failed))
    for folder in folders.values():
        folder.mkdir(parents=True)
        checkpoint = folder / "model_0000003.pth"
        checkpoint.write_bytes(b"")
        written = checkpoint.stat().st_mtime - age_s
        os.utime(checkpoint, (written, written))
    deleted = collect_stale_checkpoints(study, config, min_age=3600.0)
    gone = {name for name, folder in folders.items() if not folder.exists()}
    # A failed decision's checkpoints wait for a retry (a barrier's) up to min_age.
    assert gone == ({"done", "failed"} if age_s else {"done"})
    assert sorted(deleted) == sorted(folders[name].name for name in gone)


def test_a_reignition_interrupted_mid_pretraining_resumes_at_its_last_epoch(
    search_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spnas.pretrain
    from spnas.engines import save_state_dict

    config = make_config(tmp_path, "reignite", search_assets, reignite={"epochs": 3})
    decision = reignite_decision(SEED_ARCH, parent=0, round_=1)
    parent = save_state_dict(
        FakeEngine().build_model(config.model_spec(decision.arch, None, 2)),
        tmp_path / "parent.pth",
    )
    folder = checkpoint_dir(config.study.workdir, decision, trial_seed(config, decision))
    epochs: list[int] = []
    one_epoch = spnas.pretrain.train_one_epoch

    def interrupted_at_epoch_1(model, optimizer, loader, device, epoch, *args, **kwargs):
        epochs.append(epoch)
        if epoch == 1 and epochs.count(1) == 1:
            raise Preempted(signal.SIGTERM)
        return one_epoch(model, optimizer, loader, device, epoch, *args, **kwargs)

    monkeypatch.setattr(spnas.pretrain, "train_one_epoch", interrupted_at_epoch_1)
    with pytest.raises(Preempted):
        Objective(config, engine=FakeEngine()).reignite(
            decision, parent, tmp_path / "trial-1", folder
        )
    assert (folder / "reignited_backbone.pth.ckpt").is_file(), "epoch 0's checkpoint is kept"
    Objective(config, engine=FakeEngine()).reignite(decision, parent, tmp_path / "trial-2", folder)
    assert epochs == [0, 1, 1, 2], "the retry resumes at epoch 1"
