"""The markdown note every trial carries in optuna-dashboard (written by the objective)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spnas.search._state import Decision, TrialKind


def trial_note(decision: Decision, attrs: Mapping[str, Any], value: float | None) -> str:
    """The markdown note of one trial: what it trained, from what, and how it did."""

    def fmt(x: Any, digits: int = 2) -> str:
        return "—" if x is None else f"{x:.{digits}f}"

    lines = [f"### {decision.kind}" + (f" (round {decision.round})" if decision.round else "")]
    lines.append(f"- **architecture**: `{decision.arch}`")
    if decision.parallel is not None:
        lines.append(f"- **parallel**: `{decision.parallel}`")
    if decision.role is not None:
        lines.append(f"- **verifies**: {decision.role}, repeat {decision.repeat}")
    elif decision.repeat and decision.kind != TrialKind.CONTROL:
        lines.append(f"- **re-evaluation** {decision.repeat}: another training seed")
    elif decision.kind == TrialKind.CONTROL:
        lines.append(
            f"- **noise repeat** {decision.repeat or 0}: σ_trial of the round so far "
            f"{fmt(attrs.get('noise_sigma'))}"
        )
    if decision.parent is not None:
        lines.append(f"- **parent**: trial {decision.parent}")
    if decision.ops:
        lines.append("- **ops**: " + ", ".join(f"`{op}`" for op in decision.ops))
    lines.append(
        f"- **value**: {fmt(value)}; AP {fmt(attrs.get('AP'))}, AP50 {fmt(attrs.get('AP50'))}"
    )
    lines.append(
        f"- **cost**: {fmt(attrs.get('gmacs'), 3)} GMACs, {fmt(attrs.get('params_m'))} M parameters"
    )
    if attrs.get("inherited_fraction") is not None:
        lines.append(f"- **inherited**: {attrs['inherited_fraction']:.1%} of parameters")
    if attrs.get("train_s") is not None:
        lines.append(f"- **training**: {attrs['train_s']:.0f} s")
    return "\n".join(lines)
