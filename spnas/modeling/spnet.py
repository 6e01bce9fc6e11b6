"""SPNet: a SerialNet with parallel subnets per stage (paper §3.2, docs/design.md §3).

For stage ``l`` with ``K_l`` extra subnets and previous-stage output ``x_{l-1}``::

    x_l^0 = s_l(x_{l-1})
    x_l^k = p_l^k( x_{l-1} + U_l^k(x_l^{k-1}) )      k = 1..K_l

``U_l^k`` is a 1×1 conv (``C_l → C_{l-1}``) + norm + nearest upsampling to ``x_{l-1}``'s size.
Module names add to SerialNet's::

    res{l+2}_p{k}.{j}.<block parameters>     subnet k (1-based) of stage l, a copy of res{l+2}
    res{l+2}_u{k}.conv, res{l+2}_u{k}.norm   its fusion U_l^k

Subnets have their own parameters, initialised from their stage's; fusion norms start at
zero affine, so at insertion ``x_l^k = x_l^0`` and the network computes its SerialNet's function.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from spnas.arch import ParallelCode, SerialCode
from spnas.exceptions import ArchError
from spnas.modeling.blocks import conv1x1
from spnas.modeling.norm import get_norm, zero_affine
from spnas.modeling.serialnet import SerialNet


class UpsampleFusion(nn.Module):
    """``U``: 1×1 conv to the previous stage's channels, norm, nearest upsampling.

    Upsampling goes to the exact size of the previous stage's map (not a fixed ×2), so odd
    input sizes work.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv = conv1x1(in_channels, out_channels)
        self.norm = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if tuple(x.shape[-2:]) != tuple(size):
            x = nn.functional.interpolate(x, size=tuple(size), mode="nearest")
        return x


class SPNet(SerialNet):
    """Serial-to-parallel backbone.

    Args:
        code: the serial architecture.
        parallel: extra subnets per stage, e.g. ``"(0,1,2,0)"``; one entry per stage.
        **kwargs: as :class:`SerialNet`.
    """

    def __init__(
        self, code: SerialCode | str, parallel: ParallelCode | str | None = None, **kwargs
    ) -> None:
        super().__init__(code, **kwargs)
        parallel = (
            ParallelCode.zeros(self.code.num_stages)
            if parallel is None
            else ParallelCode.parse(parallel)
        )
        if parallel.num_stages != self.code.num_stages:
            raise ArchError(
                f"parallel code {parallel} has {parallel.num_stages} stages, expected "
                f"{self.code.num_stages} to match {self.code}"
            )
        self.parallel = parallel
        channels = self.code.stage_channels(self.base_width)
        for index, (name, k_l) in enumerate(zip(self.stage_names, parallel.subnets, strict=True)):
            prev_channels = self.base_width if index == 0 else channels[index - 1]
            for k in range(1, k_l + 1):
                self.add_module(f"{name}_p{k}", copy.deepcopy(self.stage(name)))
                fusion = UpsampleFusion(channels[index], prev_channels, self.norm)
                zero_affine(fusion.norm)
                self.add_module(f"{name}_u{k}", fusion)

    @classmethod
    def from_serialnet(cls, net: SerialNet, parallel: ParallelCode | str) -> SPNet:
        """An SPNet with ``net``'s architecture and weights, its subnets copied from ``net``."""
        spnet = cls(
            net.code,
            parallel,
            base_width=net.base_width,
            stem=net.stem_name,
            norm=net.norm,
            out_features=net.out_features,
            in_channels=net.in_channels,
            xb_groups=net.xb_groups,
        )
        spnet.load_state_dict(net.state_dict(), strict=False)
        spnet.copy_stages_to_subnets()
        return spnet

    def subnets(self, name: str) -> list[tuple[nn.Sequential, UpsampleFusion]]:
        """``(p_l^k, U_l^k)`` for ``k = 1..K_l`` of stage ``name``."""
        k_l = self.parallel[self.stage_names.index(name)]
        return [
            (getattr(self, f"{name}_p{k}"), getattr(self, f"{name}_u{k}"))
            for k in range(1, k_l + 1)
        ]

    @torch.no_grad()
    def copy_stages_to_subnets(self) -> None:
        """Re-initialise every subnet from its stage and zero every fusion (exact identity)."""
        for name in self.stage_names:
            state = self.stage(name).state_dict()
            for subnet, fusion in self.subnets(name):
                subnet.load_state_dict(state)
                zero_affine(fusion.norm)

    def _run_stage(self, index: int, name: str, x: torch.Tensor) -> torch.Tensor:
        prev = x
        x = self.stage(name)(prev)
        for subnet, fusion in self.subnets(name):
            x = subnet(prev + fusion(x, prev.shape[-2:]))
        return x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parallel={self.parallel}"
