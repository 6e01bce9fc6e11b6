"""Weight inheritance: a parent's trained weights into a child network (docs/design.md §2, §3).

Backbone tensors are mapped by *block identity* through the ops (:func:`~spnas.morphism.trace`),
not by position: after a swap every block finds its own weights in its new stage. Every other
tensor (FPN, RPN, ROI heads) keeps its name between parent and child, because ops only append
stages. A tensor is copied when the parent has it with the same shape; everything else keeps the
child's initialisation, with three exceptions that make the child compute its parent's function:

- a block an op created (expand, add_stage) gets zero scale and shift on the last norm of its
  residual branch, so it outputs ``relu(x + 0) = x`` (``x`` is itself post-ReLU);
- a parallel subnet the parent lacks copies its stage and its fusion ``U`` starts at zero;
  new subnets go *first* in their stage, so ``x_l^1 … x_l^a`` all equal ``x_l^0`` and the
  parent's subnets, now ``a+1 …``, see exactly their old inputs;
- an FPN lateral conv of a new top level starts at zero, so the top-down path into the old
  levels adds nothing and their outputs are unchanged.

Works on a bare backbone (keys ``stem.*``, ``res2.0.*``) and on whole detectors, whatever the
prefix of the backbone's keys (detectron2 ``backbone.bottom_up.``, torchvision
``backbone.body.``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from spnas.arch import ParallelCode, SerialCode
from spnas.exceptions import ArchError, WeightsError
from spnas.morphism._ops import BlockMap, Op, trace

# ``<prefix>res3.1.conv1.weight``, ``<prefix>res3_p2.0.norm1.bias``, ``<prefix>res3_u1.conv.weight``
_BACKBONE_KEY = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<stage>res\d+)(?:_(?P<kind>[pu])(?P<k>\d+))?\.(?P<rest>.+)$"
)
_BLOCK_REST = re.compile(r"^(?P<index>\d+)\.(?P<rest>.+)$")

#: Child tensors that start at zero when the parent has an FPN but lacks them: lateral convs of
#: a new level (detectron2's ``fpn_lateral{N}``; torchvision's ``fpn.inner_blocks.{i}``).
ZERO_WHEN_NEW: tuple[re.Pattern[str], ...] = (
    re.compile(r"(^|\.)fpn_lateral\d+\.(weight|bias)$"),
    re.compile(r"(^|\.)fpn\.inner_blocks\.\d+\.\d+\.(weight|bias)$"),
)


@dataclasses.dataclass(frozen=True)
class InheritReport:
    """What :func:`inherit` copied.

    Attributes:
        matched: child keys copied from the parent.
        new: child keys the parent has no tensor for (initialised as described above).
        mismatched: child keys whose parent tensor has another shape (kept as initialised).
        dropped: parent keys nothing in the child took.
        inherited_params: parameters (not buffers) copied from the parent.
        total_params: parameters of the child.
    """

    matched: tuple[str, ...]
    new: tuple[str, ...]
    mismatched: tuple[str, ...]
    dropped: tuple[str, ...]
    inherited_params: int
    total_params: int

    @property
    def fraction(self) -> float:
        """Fraction of the child's parameters inherited from the parent."""
        return self.inherited_params / self.total_params if self.total_params else 1.0

    def summary(self) -> str:
        return (
            f"inherited {self.fraction:.1%} of parameters: {len(self.matched)} tensors matched, "
            f"{len(self.new)} new, {len(self.mismatched)} reshaped, {len(self.dropped)} dropped"
        )


def find_backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """The (prefix, module) of the SerialNet/SPNet inside ``model`` (``""`` for ``model``)."""
    from spnas.modeling import SerialNet

    for name, module in model.named_modules():
        if isinstance(module, SerialNet):
            return (name + "." if name else ""), module
    raise WeightsError(f"{type(model).__name__} contains no spnas SerialNet or SPNet backbone")


def _parallel_of(module: nn.Module) -> ParallelCode:
    parallel = getattr(module, "parallel", None)
    return parallel if parallel is not None else ParallelCode.zeros(module.code.num_stages)


class _KeyMap:
    """Child key → parent key (or ``None``) for one parent/child pair."""

    def __init__(
        self, block_map: BlockMap, parent_parallel: ParallelCode, child_parallel: ParallelCode
    ) -> None:
        self.block_map = block_map
        self.parent_parallel = parent_parallel
        self.child_parallel = child_parallel

    def added_subnets(self, child_stage: int, parent_stage: int) -> int:
        return self.child_parallel[child_stage] - self.parent_parallel[parent_stage]

    def parent_key(self, key: str) -> str | None:
        match = _BACKBONE_KEY.match(key)
        if match is None:
            return key  # stem, FPN, heads: names are shared between parent and child
        prefix, stage_name, kind = match["prefix"], match["stage"], match["kind"]
        child_stage = int(stage_name[3:]) - 2
        if not 0 <= child_stage < self.block_map.child.num_stages:
            return key
        rest = match["rest"]
        if kind == "u":
            parent_stage = self.block_map.parent_stage_of(child_stage)
            if parent_stage is None:
                return None
            k = int(match["k"]) - self.added_subnets(child_stage, parent_stage)
            return f"{prefix}res{parent_stage + 2}_u{k}.{rest}" if k >= 1 else None
        block = _BLOCK_REST.match(rest)
        if block is None:
            return key
        source = self.block_map.parent_of(child_stage, int(block["index"]))
        if source is None:
            return None
        tail = f"{source.index}.{block['rest']}"
        if kind == "p":
            k = int(match["k"]) - self.added_subnets(child_stage, source.stage)
            if k >= 1:
                return f"{prefix}res{source.stage + 2}_p{k}.{tail}"
        # Stage blocks, and new subnets, which start as copies of their stage.
        return f"{prefix}res{source.stage + 2}.{tail}"


@torch.no_grad()
def inherit(
    parent_state_dict: Mapping[str, torch.Tensor],
    parent_code: SerialCode | str,
    child_model: nn.Module,
    ops: Iterable[Op | str] | str = (),
    *,
    parent_parallel: ParallelCode | str | None = None,
) -> InheritReport:
    """Load ``parent_state_dict`` into ``child_model`` through the morphism ``ops``.

    Args:
        parent_state_dict: the parent's weights: a bare backbone's or a whole detector's, with
            the same key prefix as ``child_model``'s.
        parent_code: the parent's serial code.
        child_model: the child: a SerialNet/SPNet or a detector containing one, whose serial
            code must equal ``apply_all(parent_code, ops)``.
        ops: the ops that turned the parent's code into the child's.
        parent_parallel: the parent's parallel code; ``None`` for a SerialNet parent.

    Returns:
        An :class:`InheritReport`; the fraction of inherited parameters is
        ``report.fraction``.

    Raises:
        ArchError: when the child's code is not the ops' result or the parallel codes do not
            fit their serial codes.
    """
    from spnas.modeling.norm import zero_affine

    parent_code = SerialCode.parse(parent_code)
    prefix, backbone = find_backbone(child_model)
    block_map = trace(parent_code, ops)
    if block_map.child != backbone.code:
        raise ArchError(
            f"child network is {backbone.code}, but the ops {[str(o) for o in block_map.ops]} "
            f"turn {parent_code} into {block_map.child}"
        )
    parent_parallel = (
        ParallelCode.zeros(parent_code.num_stages)
        if parent_parallel is None
        else ParallelCode.parse(parent_parallel)
    )
    if parent_parallel.num_stages != parent_code.num_stages:
        raise ArchError(
            f"parent parallel code {parent_parallel} does not fit {parent_code} "
            f"({parent_code.num_stages} stages)"
        )
    key_map = _KeyMap(block_map, parent_parallel, _parallel_of(backbone))

    target = child_model.state_dict()
    parameters = dict(child_model.named_parameters())
    matched: list[str] = []
    new: list[str] = []
    mismatched: list[str] = []
    used: set[str] = set()
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in target.items():
        source = key_map.parent_key(key)
        value = parent_state_dict.get(source) if source is not None else None
        if value is None:
            new.append(key)
        elif value.shape != tensor.shape:
            mismatched.append(key)
        else:
            updates[key] = value
            matched.append(key)
            used.add(source)
    child_model.load_state_dict(updates, strict=False)

    from spnas.modeling.spnet import UpsampleFusion

    for ref in block_map.new_blocks():
        # The block in its stage and its copy in every parallel subnet of that stage: an SPNet
        # child's subnets hold the new block too, and must start as identities as well.
        stage_name = f"res{ref.stage + 2}"
        owners = [stage_name] + [
            f"{stage_name}_p{k}" for k in range(1, key_map.child_parallel[ref.stage] + 1)
        ]
        for owner in owners:
            zero_affine(backbone.get_submodule(f"{owner}.{ref.index}").last_norm)
    new_set = set(new)
    for name, module in backbone.named_modules():
        if isinstance(module, UpsampleFusion) and f"{prefix}{name}.norm.weight" in new_set:
            zero_affine(module.norm)
    # Only a *new level of an FPN the parent has* must start silent; a parent without an FPN
    # (a bare pretrained backbone) leaves the whole FPN at its own initialisation.
    parent_levels = [p for p in ZERO_WHEN_NEW if any(p.search(k) for k in parent_state_dict)]
    for key in new:
        if key in parameters and any(p.search(key) for p in parent_levels):
            parameters[key].zero_()

    inherited = sum(parameters[k].numel() for k in matched if k in parameters)
    return InheritReport(
        matched=tuple(matched),
        new=tuple(new),
        mismatched=tuple(mismatched),
        dropped=tuple(k for k in parent_state_dict if k not in used),
        inherited_params=inherited,
        total_params=sum(p.numel() for p in parameters.values()),
    )
