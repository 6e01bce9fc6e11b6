"""Cost of a backbone: GMACs, parameters, and per-stage allocation (paper Fig. 4b).

Counts come from fvcore, which counts one multiply-add as one flop; we report them as GMACs.
The ResNet-50 body at 224×224 is 4.09 GMACs and ResNet-18 1.81, matching torchvision's
published figures. Norm layers and element-wise ops are not counted (fvcore's convention for
convolutional networks, and the convention behind those figures).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import torch

from spnas.arch import ParallelCode, SerialCode
from spnas.modeling.serialnet import SerialNet
from spnas.modeling.spnet import SPNet

#: Ops fvcore would count that published backbone figures leave out.
_IGNORED_OPS = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::add",
    "aten::add_",
    "aten::relu",
    "aten::relu_",
    "aten::max_pool2d",
    "aten::upsample_nearest2d",
    "aten::mul",
)


@dataclasses.dataclass(frozen=True)
class StageCost:
    """Cost of one stage; for an SPNet it includes the stage's subnets and fusions."""

    name: str
    gmacs: float
    params_m: float


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Cost of a backbone at one input size."""

    gmacs: float
    params_m: float
    stem_gmacs: float
    stages: tuple[StageCost, ...]
    input_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gmacs": self.gmacs,
            "params_m": self.params_m,
            "stem_gmacs": self.stem_gmacs,
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "input_size": list(self.input_size),
        }


def _free(inputs: list[Any], outputs: list[Any]) -> int:
    # fvcore keeps its default handle when given None, so ignored ops get a zero-cost one.
    return 0


def _owner(module_name: str, stage_names: tuple[str, ...]) -> str:
    head = module_name.split(".", 1)[0]
    return head.split("_", 1)[0] if head.split("_", 1)[0] in stage_names else head


def measure(net: SerialNet, input_size: tuple[int, int] = (224, 224)) -> CostReport:
    """Count the cost of ``net`` on one ``3×H×W`` image."""
    was_training = net.training
    net.eval()
    try:
        image = torch.zeros(1, 3, *input_size)
        with warnings.catch_warnings():
            # fvcore scripts a loss with torch.jit on import and traces with it, which newer
            # torch flags as deprecated: not ours to fix.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(net, image)
            analysis.set_op_handle(**dict.fromkeys(_IGNORED_OPS, _free))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_module = analysis.by_module()
            total = analysis.total()
    finally:
        net.train(was_training)
    stage_macs = dict.fromkeys(net.stage_names, 0)
    stage_params = dict.fromkeys(net.stage_names, 0)
    for name, child in net.named_children():
        owner = _owner(name, net.stage_names)
        if owner in stage_macs:
            stage_macs[owner] += by_module.get(name, 0)
            stage_params[owner] += sum(p.numel() for p in child.parameters())
    params = sum(p.numel() for p in net.parameters())
    return CostReport(
        gmacs=total / 1e9,
        params_m=params / 1e6,
        stem_gmacs=by_module.get("stem", 0) / 1e9,
        stages=tuple(
            StageCost(name, stage_macs[name] / 1e9, stage_params[name] / 1e6)
            for name in net.stage_names
        ),
        input_size=tuple(input_size),
    )


@functools.lru_cache(maxsize=4096)
def _cost_cached(
    code: str, parallel: str | None, base_width: int, stem: str, input_size: tuple[int, int]
) -> CostReport:
    net: SerialNet = (
        SPNet(code, parallel, base_width=base_width, stem=stem)
        if parallel is not None
        else SerialNet(code, base_width=base_width, stem=stem)
    )
    return measure(net, input_size)


def cost(
    code: SerialCode | str,
    parallel: ParallelCode | str | None = None,
    *,
    base_width: int = 64,
    stem: str = "resnet",
    input_size: tuple[int, int] = (224, 224),
) -> CostReport:
    """Cost of the network a code describes, building it once and caching the answer.

    The search calls this for every candidate (FLOPs-inverse sampling, budgets), so answers
    are memoised by ``(code, parallel, base_width, stem, input_size)``.
    """
    code = SerialCode.parse(code)
    parallel_text = None if parallel is None else str(ParallelCode.parse(parallel))
    with torch.no_grad():
        return _cost_cached(str(code), parallel_text, base_width, stem, tuple(input_size))
