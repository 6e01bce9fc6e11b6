"""The objective: train and evaluate the network the sampler decided on."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from spnas.data.coco import DatasetSplits
from spnas.engines.base import DataSpec, Engine, InitWeights, build_engine
from spnas.exceptions import WeightsError
from spnas.search._artifacts import remove_weights, upload_weights
from spnas.search._config import SearchConfig
from spnas.search._sampler import get_decision
from spnas.search._state import Decision, SearchState
from spnas.storage import make_artifact_store

if TYPE_CHECKING:
    from spnas.modeling import SerialNet

_logger = logging.getLogger(__name__)

#: User attribute holding the artifact id of a trial's trained weights.
WEIGHTS_ATTR = "spnas:weights"
#: Kinds whose failure blocks the search; they are never pruned.
_UNPRUNABLE = frozenset({"seed", "reignite", "parallel_seed", "final"})


class OptunaReporter:
    """Forwards a trial's evaluations to Optuna, so any pruner can stop it.

    Barrier trials report their values but are never pruned: the search cannot go on
    without them.
    """

    def __init__(self, trial: optuna.Trial, metric: str, prunable: bool) -> None:
        self.trial = trial
        self.metric = metric
        self.prunable = prunable

    def progress(self, iteration: int, total: int, loss: float) -> None:
        pass

    def evaluation(self, iteration: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, iteration)
        if self.prunable and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.3f} at iteration {iteration}")


def _backbone_prefix(state: Mapping[str, torch.Tensor]) -> str:
    for key in state:
        if key.endswith("stem.conv1.weight"):
            return key.removesuffix("stem.conv1.weight")
    raise WeightsError("the weights hold no SPNet backbone (no '…stem.conv1.weight' key)")


def fetch_weights(study: optuna.Study, number: int, artifact_store: Any, path: Path) -> Path:
    """Download the trained weights of trial ``number`` to ``path``.

    Raises:
        WeightsError: when the trial has none, or they were deleted from the store.
    """
    trial = study.get_trials(deepcopy=False)[number]
    artifact_id = trial.user_attrs.get(WEIGHTS_ATTR)
    if artifact_id is None:
        raise WeightsError(f"trial {number} has no weights ({WEIGHTS_ATTR} is unset)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a re-run (retry, re-export) replaces an earlier download
    try:
        download_artifact(
            artifact_store=artifact_store, artifact_id=artifact_id, file_path=str(path)
        )
    except ArtifactNotFound as exc:
        raise WeightsError(
            f"weights of trial {number} (artifact {artifact_id}) are gone from the store"
        ) from exc
    return path


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
    ``train_s``, ``inherited_fraction``), and deletes weights that can no longer be parents
    (all but ``search.keep_top_k`` per phase and the current parents).

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
        if decision.kind in ("idle", "exhausted"):
            raise optuna.TrialPruned(f"nothing to train ({decision.kind})")
        for key, value in (
            ("kind", decision.kind),
            ("arch", str(decision.arch)),
            ("parallel", None if decision.parallel is None else str(decision.parallel)),
            ("round", decision.round),
            ("parent", decision.parent),
            ("ops", list(decision.ops)),
        ):
            trial.set_user_attr(key, value)
        data = self.data()
        assert self._num_classes is not None
        out_dir = self.workdir / "trials" / f"{trial.number:05d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        init = self.init_weights(trial, decision, out_dir)
        spec = self.config.model_spec(decision.arch, decision.parallel, self._num_classes)
        schedule = self.config.final_schedule if decision.kind == "final" else self.config.schedule
        reporter = OptunaReporter(
            trial, self.config.data.metric, prunable=decision.kind not in _UNPRUNABLE
        )
        result = self.engine.train_eval(spec, init, schedule, data, reporter, out_dir=out_dir)
        artifact_id = upload_weights(trial, self.artifact_store, result.weights)
        trial.set_user_attr(WEIGHTS_ATTR, artifact_id)
        value = result.metric(self.config.data.metric)
        attrs = {
            "gmacs": result.gmacs,
            "params_m": result.params_m,
            "AP": result.metrics.get("AP"),
            "AP50": result.metrics.get("AP50"),
            "train_s": result.train_seconds,
            "images_per_s": result.images_per_second,
            "inherited_fraction": result.inherited_fraction,
            "metrics": result.to_dict()["metrics"],
        }
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        _save_note(trial, decision, attrs, value)
        # The store holds the weights now; the trial folder keeps logs and metrics only.
        for path in out_dir.glob("*.pth"):
            path.unlink()
        self.prune_weights(trial.study, keep={trial.number})
        return value

    # ------------------------------------------------------------------ weights
    def fetch(self, study: optuna.Study, number: int, path: Path) -> Path:
        """Download trial ``number``'s weights to ``path``."""
        return fetch_weights(study, number, self.artifact_store, path)

    def init_weights(
        self, trial: optuna.Trial, decision: Decision, out_dir: Path
    ) -> InitWeights | None:
        """The weights the trial starts from (DESIGN §4)."""
        study = trial.study
        if decision.kind == "seed":
            return InitWeights(self.seed_backbone())
        assert decision.parent is not None
        parent_path = self.fetch(study, decision.parent, out_dir / "parent.pth")
        parent = get_decision(study.get_trials(deepcopy=False)[decision.parent])
        if decision.kind == "reignite":
            return InitWeights(self.reignite(decision, parent_path, out_dir))
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
            return path
        if config.model.pretrained:
            net = load_pretrained_seed(config)
            tmp = path.with_name(path.name + ".tmp")
            torch.save(net.state_dict(), tmp)
            tmp.replace(path)
            return path
        return self._pretrain(config.seed_arch, path, init=None)

    def _pretrain(self, arch: Any, out: Path, init: Path | None) -> Path:
        from spnas.pretrain import PretrainConfig, pretrain

        r = self.config.reignite
        pretrain(
            arch,
            out,
            data=None if r.imagefolder else self.config.data.dir,
            imagefolder=r.imagefolder,
            config=PretrainConfig(
                epochs=r.epochs,
                batch_size=r.batch_size,
                lr=r.lr,
                min_lr=min(1e-4, r.lr),
                image_size=r.image_size,
                base_width=self.config.model.width,
                stem=self.config.model.stem,
                xb_groups=self.config.model.xb_groups,
                seed=self.config.search.seed,
            ),
            init_weights=init,
            norm=self.config.model.norm,
            device=self.config.schedule.device,
            show_progress=self.config.engine.show_progress,
        )
        return out

    def reignite(self, decision: Decision, parent_path: Path, out_dir: Path) -> Path:
        """Pretrain the round's best backbone, put it back into its detector's weights."""
        state = torch.load(parent_path, map_location="cpu", weights_only=True)
        prefix = _backbone_prefix(state)
        backbone = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        backbone = {k: v for k, v in backbone.items() if k.startswith(("stem.", "res"))}
        init = out_dir / "parent_backbone.pth"
        torch.save(backbone, init)
        pretrained = self._pretrain(decision.arch, out_dir / "reignited_backbone.pth", init)
        fresh = torch.load(pretrained, map_location="cpu", weights_only=True)
        state.update({prefix + k: v for k, v in fresh.items()})
        composed = out_dir / "reignited.pth"
        torch.save(state, composed)
        return composed

    def prune_weights(self, study: optuna.Study, keep: set[int]) -> None:
        """Delete weights that can no longer be parents (keeps the top-k of each phase)."""
        trials = study.get_trials(deepcopy=False)
        state = SearchState.from_trials(trials, self.config)
        keep = set(keep)
        for best in (state.parent, state.round_best, state.best_serial, state.best_parallel):
            if best is not None:
                keep.add(best.number)
        keep.update(r.decision.parent for r in state.records if r.running and r.decision.parent)
        reverse = self.config.direction == "maximize"
        for phase in (("seed", "serial", "reignite"), ("parallel_seed", "parallel", "final")):
            done = [r for r in state.records if r.decision.kind in phase and r.value is not None]
            done.sort(key=lambda r: r.value, reverse=reverse)
            keep.update(r.number for r in done[: self.config.search.keep_top_k])
        stale = [
            (trial, trial.user_attrs[WEIGHTS_ATTR])
            for trial in trials
            if WEIGHTS_ATTR in trial.user_attrs
            and trial.number not in keep
            and trial.state == TrialState.COMPLETE
        ]
        remove_weights(study, stale, self.artifact_store)


def _save_note(
    trial: optuna.Trial, decision: Decision, attrs: Mapping[str, Any], value: float
) -> None:
    # The dashboard note is a convenience: a failure to write it must not fail the trial.
    try:
        from optuna_dashboard import save_note

        from spnas.report import trial_note

        save_note(trial, trial_note(decision, attrs, value))
    except Exception as exc:
        _logger.warning(
            "trial %d: no dashboard note (%s: %s)", trial.number, type(exc).__name__, exc
        )


def build_search_engine(config: SearchConfig) -> Engine:
    """The engine a study's YAML names, configured as its trials use it."""
    if config.engine.name == "detectron2":
        from spnas.engines.detectron2 import Detectron2Engine

        return Detectron2Engine(
            config.engine.config,
            opts=list(config.engine.opts),
            show_progress=config.engine.show_progress,
        )
    engine = build_engine(config.engine.name)
    engine.show_progress = config.engine.show_progress
    return engine
