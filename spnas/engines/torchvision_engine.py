"""The torchvision engine: Faster R-CNN + FPN over an SPNet backbone (DESIGN §5).

The second engine, for machines where detectron2 cannot be installed. The detector is
torchvision's :class:`~torchvision.models.detection.FasterRCNN` with :class:`SPNetFPN` as its
backbone, so state-dict keys are::

    backbone.body.<SPNet keys>                 (stem.*, res2.0.conv1.weight, res3_p1.*, …)
    backbone.fpn.inner_blocks.{i}.0.weight     lateral 1×1 convs, one per stage
    backbone.fpn.layer_blocks.{i}.0.weight     output 3×3 convs
    rpn.*, roi_heads.*                         heads

which is what weight inheritance (:mod:`spnas.morphism`) expects: a new stage's lateral conv
``inner_blocks.{i}`` starts at zero there, so the child detector computes its parent's function.

FPN levels are one per stage (``res2 … res{S+1}``, strides 4 … 2^(S+1)) plus a max-pooled level
on top, as detectron2's ``LastLevelMaxPool``: 5–8 levels for the search space's 4–7 stages.
Anchors are ``spec.anchor_size`` at the stride-4 level and double per level, with aspect ratios
0.5, 1, 2 everywhere. RoIAlign pools from the stage levels (not the pool level), as detectron2.

Images are padded to a multiple of 32 (torchvision's default), not of the deepest stride:
the FPN upsamples to each level's exact size, so 5–7-stage backbones work without padding small
images to 256 px.

The heads default to torchvision's (and detectron2's) sizes; :class:`TorchvisionEngine` takes
``FasterRCNN`` options to scale them down for CPU runs.

Images enter the model as ``[0, 1]`` RGB tensors; the model's transform normalises them with
the ImageNet statistics of :mod:`spnas.data.normalization` (rescaled to ``[0, 1]``), so the
backbone sees what classification pretraining (:mod:`spnas.pretrain`) showed it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

# Scale inference and level mapping as MultiScaleRoIAlign's own (torchvision 0.29).
from torchvision.ops.poolers import _setup_scales
from tqdm import tqdm

from spnas.data.coco import CocoDataset
from spnas.data.normalization import PIXEL_MEAN_RGB, PIXEL_STD_RGB
from spnas.data.torch_dataset import DetectionDataset, collate
from spnas.device import resolve_device
from spnas.engines.base import (
    DataSpec,
    Engine,
    InitWeights,
    ModelSpec,
    NullReporter,
    Reporter,
    Schedule,
    TrialDiverged,
    TrialResult,
    register_engine,
    save_state_dict,
)
from spnas.evaluation import coco_metrics, log_average_miss_rate
from spnas.exceptions import ConfigError, WeightsError
from spnas.modeling.flops import cost
from spnas.modeling.spnet import SPNet

_logger = logging.getLogger(__name__)

#: Name of the max-pooled level above the last stage (torchvision's ``LastLevelMaxPool``).
POOL_LEVEL = "pool"

#: Aspect ratios of the anchors at every level (detectron2's and torchvision's default).
ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)

#: Images per forward pass during evaluation (no gradients, so larger than training's).
EVAL_BATCH = 8


class SPNetFPN(nn.Module):
    """An SPNet followed by an FPN: the ``backbone`` torchvision's detectors expect.

    Args:
        body: the SPNet (or SerialNet) backbone; every stage feeds the FPN.
        out_channels: channels of every FPN level.

    ``forward`` returns an ordered dict ``{res2: …, …, res{S+1}: …, pool: …}`` of
    ``out_channels``-channel maps, finest first.
    """

    def __init__(self, body: SPNet, out_channels: int) -> None:
        super().__init__()
        shapes = body.output_shape()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [shapes[name].channels for name in body.out_features],
            out_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.out_channels = out_channels
        self.stage_names: tuple[str, ...] = tuple(body.out_features)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        # The FPN's top-down pass runs in dict order, so order finest → coarsest explicitly.
        return self.fpn(OrderedDict((name, features[name]) for name in self.stage_names))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs inside the block and restore their states after it.

    A trial must be reproducible from its schedule's seed, yet must not change the random
    state of the caller (the search process runs many trials, and reports its own sampling).
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _infinite(loader: DataLoader) -> Iterator[Any]:
    """Batches of ``loader``, epoch after epoch (reshuffled each epoch)."""
    while True:
        yield from loader


def _loss_text(losses: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{name}={value.detach().item():.4g}" for name, value in losses.items())


class UnroundedAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator without its rounding of cell anchors to whole pixels.

    detectron2 keeps fractional anchors; at the 8–11 px anchors of small images, rounding moves
    anchor edges by up to half a pixel, enough to change which proposals a converted
    detectron2 RPN makes.
    """

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales_t[None, :] / h_ratios[:, None]).view(-1)
        hs = (scales_t[None, :] * h_ratios[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """Multi-scale RoIAlign with half-pixel alignment (``aligned=True``, detectron2's
    ``ROIAlignV2``), which torchvision's :class:`MultiScaleRoIAlign` does not expose.

    Without it, a head trained by detectron2 sees its RoI features shifted by half a feature
    pixel (2 image pixels at stride 4).
    """

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        )
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            result[index] = roi_align(
                feature,
                rois[index],
                output_size=self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            ).to(result.dtype)
        return result


@dataclasses.dataclass(frozen=True)
class FasterRCNNLayout:
    """Everything but the weights that defines a torchvision Faster R-CNN over an SPNet.

    The engine builds its detectors from a layout (:meth:`TorchvisionEngine.layout`), and an
    exported detector carries its own (:func:`save_detector`), so :func:`load_detector`
    rebuilds it in a process that has spnas and torchvision and nothing else.

    Attributes:
        spec: backbone, FPN width and class count (``spec.anchor_size`` is not used: the
            anchors are ``anchor_sizes``).
        anchor_sizes: anchor sizes of each FPN level, finest first: one tuple per stage plus
            one for the max-pooled level.
        aspect_ratios: anchor aspect ratios (height / width), the same at every level.
        representation_size: width of the box head's two hidden FC layers.
        min_size, max_size: the transform's image resizing.
        size_divisible: images are padded to a multiple of this.
        sampling_ratio: RoIAlign's sampling points per bin (0: adaptive, as detectron2).
        detectron2_geometry: anchors and RoIAlign as detectron2 computes them
            (:class:`UnroundedAnchorGenerator`, :class:`AlignedMultiScaleRoIAlign`), for
            detectors converted from detectron2; torchvision's own otherwise.
        options: further keyword arguments of torchvision's ``FasterRCNN`` (numbers only:
            ``rpn_pre_nms_top_n_test``, ``box_score_thresh``, …).
    """

    spec: ModelSpec
    anchor_sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS
    representation_size: int = 1024
    min_size: int = 800
    max_size: int = 1333
    size_divisible: int = 32
    sampling_ratio: int = 2
    detectron2_geometry: bool = False
    options: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        levels = self.spec.arch.num_stages + 1
        if len(self.anchor_sizes) != levels:
            raise ConfigError(
                f"anchor_sizes has {len(self.anchor_sizes)} levels, expected {levels} for "
                f"{self.spec.arch} (one per stage plus the max-pooled level)"
            )
        clash = _RESERVED_OPTIONS & set(self.options)
        if clash:
            raise ConfigError(
                f"detector option {sorted(clash)[0]!r} is set by the layout, not as an option"
            )
        for key, value in self.options.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(
                    f"detector option {key!r}={value!r}: expected a number (modules are built "
                    "from the layout)"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; :meth:`from_dict` inverts it."""
        values = dataclasses.asdict(self)
        values["spec"] = self.spec.to_dict()
        values["options"] = dict(self.options)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FasterRCNNLayout:
        values = dict(values)
        values["spec"] = ModelSpec(**values["spec"])
        values["anchor_sizes"] = tuple(tuple(sizes) for sizes in values["anchor_sizes"])
        values["aspect_ratios"] = tuple(values["aspect_ratios"])
        return cls(**values)


#: ``FasterRCNN`` arguments that :func:`build_faster_rcnn` sets from the layout.
_RESERVED_OPTIONS = frozenset(
    {
        "backbone",
        "num_classes",
        "min_size",
        "max_size",
        "image_mean",
        "image_std",
        "size_divisible",
        "rpn_anchor_generator",
        "rpn_head",
        "box_roi_pool",
        "box_head",
        "box_predictor",
    }
)


def build_faster_rcnn(layout: FasterRCNNLayout) -> FasterRCNN:
    """A torchvision Faster R-CNN with random weights, as ``layout`` describes."""
    spec = layout.spec
    body = SPNet(
        spec.arch,
        spec.parallel,
        base_width=spec.base_width,
        stem=spec.stem,
        norm=spec.norm,
        xb_groups=spec.xb_groups,
    )
    backbone = SPNetFPN(body, spec.fpn_channels)
    levels = len(layout.anchor_sizes)
    d2 = layout.detectron2_geometry
    anchor_generator = (UnroundedAnchorGenerator if d2 else AnchorGenerator)(
        sizes=layout.anchor_sizes, aspect_ratios=(layout.aspect_ratios,) * levels
    )
    roi_pool = (AlignedMultiScaleRoIAlign if d2 else MultiScaleRoIAlign)(
        featmap_names=list(backbone.stage_names),
        output_size=7,
        sampling_ratio=layout.sampling_ratio,
    )
    height, width = roi_pool.output_size
    return FasterRCNN(
        backbone,
        num_classes=None,  # the predictor fixes it: spec.num_classes + background
        min_size=layout.min_size,
        max_size=layout.max_size,
        image_mean=[m / 255.0 for m in PIXEL_MEAN_RGB],
        image_std=[s / 255.0 for s in PIXEL_STD_RGB],
        size_divisible=layout.size_divisible,
        rpn_anchor_generator=anchor_generator,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(spec.fpn_channels * height * width, layout.representation_size),
        box_predictor=FastRCNNPredictor(layout.representation_size, spec.num_classes + 1),
        **layout.options,
    )


#: ``format`` entry of the files :func:`save_detector` writes.
DETECTOR_FORMAT = "spnas.torchvision.FasterRCNN/1"


def save_detector(
    state_dict: Mapping[str, torch.Tensor], layout: FasterRCNNLayout, path: Path
) -> Path:
    """Write a detector as one file: its layout (JSON) and its state dict.

    The file is read with ``torch.load(weights_only=True)``; :func:`load_detector` rebuilds
    the model from it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "format": DETECTOR_FORMAT,
            "layout": json.dumps(layout.to_dict()),
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        },
        tmp,
    )
    tmp.replace(path)
    return path


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> FasterRCNN:
    """The torchvision Faster R-CNN that :func:`save_detector` (or ``spnas export``) wrote,
    in eval mode.

    Raises:
        WeightsError: naming the file when it is missing, truncated, or not such a detector.
    """
    from spnas.modeling.torchvision_weights import load_tensor_file

    path = Path(path)
    saved = load_tensor_file(path, "detector file", map_location)
    if not isinstance(saved, dict) or saved.get("format") != DETECTOR_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise WeightsError(
            f"detector file {str(path)!r} has format {found!r}, expected {DETECTOR_FORMAT!r} "
            "(written by `spnas export`)"
        )
    model = build_faster_rcnn(FasterRCNNLayout.from_dict(json.loads(saved["layout"])))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(f"detector file {str(path)!r}: {exc}") from exc
    return model.eval()


@register_engine("torchvision")
class TorchvisionEngine(Engine):
    """Faster R-CNN (torchvision) with an SPNet + FPN backbone, trained with SGD."""

    name = "torchvision"

    def __init__(self, representation_size: int = 1024, **detector_options: float) -> None:
        """Options of the detector's heads; the defaults are torchvision's and detectron2's.

        Args:
            representation_size: width of the box head's two hidden FC layers (1024).
            **detector_options: further numeric keyword arguments of torchvision's
                ``FasterRCNN`` (``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``,
                …). The box head dominates training time on a CPU when backbones are small
                (RoIAlign's backward and the FC layers over 512 sampled RoIs per image), so
                CPU demos and tests lower ``box_batch_size_per_image`` and
                ``representation_size``.
        """
        clash = _RESERVED_OPTIONS & set(detector_options)
        if clash:
            raise ConfigError(
                f"detector option {sorted(clash)[0]!r} is set from the ModelSpec and Schedule, "
                "not as an engine option"
            )
        self.representation_size = representation_size
        self.detector_options = dict(detector_options)

    def layout(self, spec: ModelSpec, schedule: Schedule | None = None) -> FasterRCNNLayout:
        """The detector of ``spec``: anchors ``spec.anchor_size`` at the stride-4 level,
        doubling per level; image sizes from ``schedule`` (the :class:`Schedule` defaults,
        800 and 1333, when ``None``)."""
        schedule = schedule or Schedule()
        levels = spec.arch.num_stages + 1
        return FasterRCNNLayout(
            spec=spec,
            anchor_sizes=tuple((spec.anchor_size * 2**i,) for i in range(levels)),
            representation_size=self.representation_size,
            min_size=schedule.min_size,
            max_size=schedule.max_size,
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

    # -- training -------------------------------------------------------------------------

    def train_eval(
        self,
        spec: ModelSpec,
        init_weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        reporter: Reporter | None = None,
        out_dir: str | Path = "output",
    ) -> TrialResult:
        """Train ``spec`` from ``init_weights`` by ``schedule`` on ``data``; evaluate on val.

        Evaluates every ``schedule.eval_period`` iterations (when positive) and at the end,
        passing the metrics to ``reporter.evaluation`` (which may raise
        :class:`optuna.TrialPruned`; it propagates). Writes ``out_dir/model_final.pth``.

        Raises:
            TrialDiverged: when the loss becomes non-finite; the message names the
                iteration and every loss component.
        """
        reporter = reporter or NullReporter()
        out_dir = Path(out_dir)
        device = resolve_device(schedule.device)
        train_set = data.splits.load("train")
        val_set = data.splits.load("val")
        self._check_classes(spec, train_set)
        total = schedule.total_iters(len(train_set))

        with _seeded(schedule.seed, device):
            model = self.build_model(spec, schedule)
            inherited = self.initialize(model, init_weights)
            model.to(device)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(
                params,
                lr=schedule.lr_at(0, total),
                momentum=schedule.momentum,
                weight_decay=schedule.weight_decay,
            )
            dataset = DetectionDataset(train_set, train=True)
            loader = DataLoader(
                dataset,
                batch_size=schedule.ims_per_batch,
                shuffle=True,
                drop_last=len(dataset) >= schedule.ims_per_batch,
                num_workers=schedule.num_workers,
                collate_fn=collate,
                generator=torch.Generator().manual_seed(schedule.seed),
                # Workers live through all epochs instead of being re-spawned per epoch.
                persistent_workers=schedule.num_workers > 0,
            )

            train_seconds = eval_seconds = 0.0
            metrics: dict[str, float] = {}
            batches = _infinite(loader)
            progress = tqdm(
                total=total,
                desc=f"train {spec.arch}",
                unit="it",
                dynamic_ncols=True,
                mininterval=1.0,
                disable=not self.show_progress,
            )
            try:
                model.train()
                for it in range(total):
                    started = time.perf_counter()
                    lr = schedule.lr_at(it, total)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    images, targets = next(batches)
                    images = [image.to(device, non_blocking=True) for image in images]
                    targets = [
                        {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                        for t in targets
                    ]
                    losses = model(images, targets)
                    loss = sum(losses.values())
                    if not torch.isfinite(loss):
                        raise TrialDiverged(
                            f"training {spec.arch} diverged at iteration {it} of {total} "
                            f"(lr {lr:.4g}): loss {loss.detach().item()} ({_loss_text(losses)}); "
                            "lower base_lr or raise warmup_iters"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_value = loss.detach().item()
                    train_seconds += time.perf_counter() - started
                    progress.update()
                    progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2g}", refresh=False)
                    reporter.progress(it + 1, total, loss_value)

                    done = it + 1
                    if (
                        schedule.eval_period > 0
                        and done % schedule.eval_period == 0
                        and done < total
                    ):
                        started = time.perf_counter()
                        metrics = self._evaluate(model, val_set, data, device, schedule.num_workers)
                        eval_seconds += time.perf_counter() - started
                        model.train()
                        reporter.evaluation(done, metrics)
            finally:
                progress.close()
                # Dropping the loader here (not when an exception's traceback is freed) shuts
                # its workers down at once, so a diverged or pruned trial leaves no processes.
                del batches, loader

            started = time.perf_counter()
            metrics = self._evaluate(model, val_set, data, device, schedule.num_workers)
            eval_seconds += time.perf_counter() - started
            reporter.evaluation(total, metrics)
            # Inside the seeded block: measuring builds a network, which draws random numbers.
            report = cost(
                spec.arch,
                spec.parallel,
                base_width=spec.base_width,
                stem=spec.stem,
                input_size=(schedule.min_size, schedule.min_size),
            )

        weights = save_state_dict(model, out_dir / "model_final.pth")
        images_seen = total * schedule.ims_per_batch
        return TrialResult(
            metrics=metrics,
            weights=weights,
            gmacs=report.gmacs,
            params_m=report.params_m,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            images_per_second=images_seen / train_seconds if train_seconds > 0 else math.nan,
            iterations=total,
            inherited_fraction=inherited,
        )

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(
        self,
        spec: ModelSpec,
        weights: InitWeights | None,
        data: DataSpec,
        schedule: Schedule,
    ) -> dict[str, float]:
        """Evaluate ``spec`` initialised from ``weights`` on the validation split, untrained.

        Uses the schedule's device, seed (for the randomly initialised tensors) and image
        sizes.
        """
        device = resolve_device(schedule.device)
        val_set = data.splits.load("val")
        self._check_classes(spec, val_set)
        with _seeded(schedule.seed, device):
            model = self.build_model(spec, schedule)
            self.initialize(model, weights)
            model.to(device)
            return self._evaluate(model, val_set, data, device, schedule.num_workers)

    @torch.no_grad()
    def _evaluate(
        self,
        model: FasterRCNN,
        val_set: CocoDataset,
        data: DataSpec,
        device: torch.device,
        num_workers: int = 0,
    ) -> dict[str, float]:
        """COCO AP (and LAMR when it is the metric) of ``model`` on ``val_set``."""
        model.eval()
        dataset = DetectionDataset(val_set, train=False)
        loader = DataLoader(
            dataset,
            batch_size=EVAL_BATCH,
            num_workers=num_workers,
            collate_fn=collate,
            # A loader draws its workers' base seed from its generator; a private one keeps
            # evaluation from consuming the training's random stream, so evaluating every
            # eval_period iterations does not change what is trained.
            generator=torch.Generator(),
        )
        results: list[dict[str, Any]] = []
        for images, targets in loader:
            outputs = model([image.to(device) for image in images])
            # Boxes come back in the original image's pixels (the transform undoes resizing).
            for target, output in zip(targets, outputs, strict=True):
                boxes = output["boxes"].cpu()
                boxes[:, 2:] -= boxes[:, :2]  # xyxy → xywh
                for box, score, label in zip(
                    boxes.tolist(),
                    output["scores"].cpu().tolist(),
                    output["labels"].cpu().tolist(),
                    strict=True,
                ):
                    results.append(
                        {
                            "image_id": target["image_id"],
                            "category_id": dataset.category_id(label),
                            "bbox": box,
                            "score": score,
                        }
                    )
        metrics = coco_metrics(data.splits.val_json, results)
        if data.metric == "LAMR":
            gt = json.loads(Path(data.splits.val_json).read_text(encoding="utf-8"))
            metrics["LAMR"] = log_average_miss_rate(gt, results, data.lamr_category)
        return metrics

    @staticmethod
    def _check_classes(spec: ModelSpec, dataset: CocoDataset) -> None:
        if len(dataset.categories) != spec.num_classes:
            raise ConfigError(
                f"model has num_classes={spec.num_classes}, but {str(dataset.json_path)!r} "
                f"has {len(dataset.categories)} categories"
            )
