"""The torchvision engine: the engine contract over a torchvision Faster R-CNN."""

from __future__ import annotations

import functools
import inspect
import math
import time
from pathlib import Path

from torchvision.models.detection import FasterRCNN

from spnas.data.coco import CocoDataset
from spnas.device import resolve_device
from spnas.engines._registry import register_engine
from spnas.engines._roi import canonical_box_size
from spnas.engines._types import (
    DataSpec,
    ExportedDetector,
    InitWeights,
    ModelSpec,
    NullReporter,
    Reporter,
    Schedule,
    TrialResult,
)
from spnas.engines.base import Engine, save_state_dict
from spnas.engines.distributed import data_parallel, is_main_process
from spnas.engines.torchvision.builder import build_faster_rcnn
from spnas.engines.torchvision.evaluation import evaluate_detector
from spnas.engines.torchvision.layout import (
    RESERVED_OPTIONS,
    FasterRCNNLayout,
    check_detector_options,
)
from spnas.engines.torchvision.serialization import save_detector
from spnas.engines.torchvision.training import seeded, train
from spnas.exceptions import ConfigError
from spnas.modeling.flops import cost
from spnas.modeling.torchvision_weights import read_weights

__all__ = ["TorchvisionEngine"]

#: The keyword arguments torchvision's ``FasterRCNN`` names.
_FASTER_RCNN_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(FasterRCNN).parameters.items()
    if parameter.kind is parameter.POSITIONAL_OR_KEYWORD
)


@register_engine("torchvision")
class TorchvisionEngine(Engine):
    """Faster R-CNN (torchvision) with an SPNet + FPN backbone, trained with SGD."""

    name = "torchvision"

    def __init__(
        self,
        representation_size: int = 1024,
        show_progress: bool = True,
        **detector_options: float,
    ) -> None:
        """Options of the detector's heads; the defaults are torchvision's and detectron2's.

        Args:
            representation_size: width of the box head's two hidden FC layers (1024).
            show_progress: show a progress bar while training.
            **detector_options: further numeric keyword arguments of torchvision's
                ``FasterRCNN`` (``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``,
                …). The box head dominates training time on a CPU when backbones are small
                (RoIAlign's backward and the FC layers over 512 sampled RoIs per image), so
                CPU demos and tests lower ``box_batch_size_per_image`` and
                ``representation_size``.

        Raises:
            ConfigError: for an option that is not a number, or one set from the
                :class:`ModelSpec` and :class:`Schedule`.
        """
        unknown = sorted(set(detector_options) - _FASTER_RCNN_OPTIONS - RESERVED_OPTIONS)
        if unknown:
            raise ConfigError(
                f"engine 'torchvision' has no option {unknown[0]!r}, expected "
                "representation_size, show_progress or a numeric argument of torchvision's "
                f"FasterRCNN: {', '.join(sorted(_FASTER_RCNN_OPTIONS - RESERVED_OPTIONS))}"
            )
        check_detector_options(detector_options, "from the ModelSpec and Schedule")
        self.representation_size = representation_size
        self.show_progress = show_progress
        self.detector_options = dict(detector_options)

    def layout(self, spec: ModelSpec, schedule: Schedule | None = None) -> FasterRCNNLayout:
        """The detector of ``spec``: anchors ``spec.anchor_size`` at the stride-4 level,
        doubling per level; image sizes from ``schedule`` (the :class:`Schedule` defaults,
        800 and 1333, when ``None``); the RoI pooler's canonical box ``224 × min_size / 800``."""
        schedule = schedule or Schedule()
        levels = spec.arch.num_stages + 1
        return FasterRCNNLayout(
            spec=spec,
            anchor_sizes=tuple((spec.anchor_size * 2**i,) for i in range(levels)),
            representation_size=self.representation_size,
            min_size=schedule.min_size,
            max_size=schedule.max_size,
            # The pooler maps boxes to levels relative to the image size, as detectron2's
            # InputScaledROIHeads: small images then use every level (spnas.engines._roi).
            canonical_box_size=canonical_box_size(schedule.min_size),
            options={
                # torchvision's evaluation defaults, stated so that they do not drift: COCO
                # keeps at most 100 detections per image; scores under 0.05 only add noise.
                "box_score_thresh": 0.05,
                "box_detections_per_img": 100,
                **self.detector_options,
            },
        )

    def build_model(self, spec: ModelSpec, schedule: Schedule | None = None) -> FasterRCNN:
        """A Faster R-CNN for ``spec`` with random weights (see :meth:`layout`)."""
        return build_faster_rcnn(self.layout(spec, schedule))

    @data_parallel
    def train_eval(
        self,
        spec: ModelSpec,
        init_weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        reporter: Reporter | None = None,
        out_dir: str | Path = "output",
        *,
        checkpoint_dir: str | Path | None = None,
    ) -> TrialResult:
        """See :meth:`Engine.train_eval`. A diverged trial's message names the iteration and
        every loss component.

        ``checkpoint_dir`` is accepted and not used: this engine writes no resumable
        checkpoints, so a preempted trial trains again from the beginning.

        Data-parallel (``schedule.gpus_per_trial`` > 1): ``DistributedDataParallel`` with a
        ``DistributedSampler``; the main process evaluates (the others wait at their next
        step) and writes the weights."""
        reporter = reporter or NullReporter()
        device = resolve_device(schedule.device)
        train_set = data.splits.load("train")
        val_set = data.splits.load("val")
        self._check_classes(spec, train_set)
        evaluate = functools.partial(
            evaluate_detector,
            val_set=val_set,
            data=data,
            device=device,
            num_workers=schedule.num_workers,
        )
        with seeded(schedule.seed, device):
            model = self.build_model(spec, schedule)
            inherited = self.initialize(model, init_weights)
            model.to(device)
            times = train(
                model,
                train_set,
                schedule,
                device,
                reporter=reporter,
                evaluate=evaluate,
                name=str(spec.arch),
                show_progress=self.show_progress,
            )
            total = schedule.total_iters(len(train_set))
            metrics: dict[str, float] = {}
            if is_main_process():
                started = time.perf_counter()
                metrics = evaluate(model)
                times.eval_seconds += time.perf_counter() - started
                reporter.evaluation(total, metrics)
            # Inside the seeded block: measuring builds a network, which draws random numbers.
            report = cost(
                spec.arch,
                spec.parallel,
                base_width=spec.base_width,
                stem=spec.stem,
                input_size=(schedule.min_size, schedule.min_size),
            )

        weights = Path(out_dir) / "model_final.pth"
        if is_main_process():
            save_state_dict(model, weights)
        train_seconds = times.train_seconds
        return TrialResult(
            metrics=metrics,
            weights=weights,
            gmacs=report.gmacs,
            params_m=report.params_m,
            train_seconds=train_seconds,
            eval_seconds=times.eval_seconds,
            images_per_second=(
                total * schedule.ims_per_batch / train_seconds if train_seconds > 0 else math.nan
            ),
            iterations=total,
            inherited_fraction=inherited,
        )

    def evaluate(
        self,
        spec: ModelSpec,
        weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        out_dir: str | Path = "output",
    ) -> dict[str, float]:
        """See :meth:`Engine.evaluate`; writes nothing to ``out_dir``."""
        device = resolve_device(schedule.device)
        val_set = data.splits.load("val")
        self._check_classes(spec, val_set)
        with seeded(schedule.seed, device):
            model = self.build_model(spec, schedule)
            self.initialize(model, weights)
            model.to(device)
            return evaluate_detector(model, val_set, data, device, schedule.num_workers)

    def export(
        self,
        spec: ModelSpec,
        weights: Path,
        schedule: Schedule,
        data: DataSpec,
        out_dir: Path,
    ) -> ExportedDetector:
        """Write ``model_torchvision.pth``: the detector as trained, with its layout. There is
        no detectron2 config: the heads are torchvision's."""
        layout = self.layout(spec, schedule)
        model = build_faster_rcnn(layout)
        state = read_weights(weights)
        model.load_state_dict(state)
        return ExportedDetector(
            model=model,
            torchvision=save_detector(state, layout, Path(out_dir) / "model_torchvision.pth"),
            skipped=("config.yaml: the study trained torchvision heads, not detectron2 ones",),
        )

    @staticmethod
    def _check_classes(spec: ModelSpec, dataset: CocoDataset) -> None:
        if len(dataset.categories) != spec.num_classes:
            raise ConfigError(
                f"model has num_classes={spec.num_classes}, but {str(dataset.json_path)!r} "
                f"has {len(dataset.categories)} categories"
            )
