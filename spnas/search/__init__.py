"""SP-NAS on Optuna: the sampler, its state machine, the objective, and workers.

Public API:

- :class:`SPNASSampler` — an ``optuna.samplers.BaseSampler`` implementing Algorithm 1;
- :class:`SearchConfig` — the validated study YAML;
- :class:`SearchState`, :func:`propose_serial`, :func:`propose_parallel` — building blocks for
  your own samplers;
- :class:`Decision`, :func:`get_decision` — what a trial trains, inside your own objective;
- :class:`Objective`, :func:`create_search_study`, :func:`load_search_study`,
  :func:`run_worker`, :func:`prepare_data` — what ``spnas search`` and ``spnas worker`` run;
- :func:`resume_failed_search` — what ``spnas resume`` (and every starting worker) runs.
"""

from __future__ import annotations

from spnas.search._config import CONFIG_ATTR, SearchConfig
from spnas.search._notes import trial_note
from spnas.search._objective import WEIGHTS_ATTR, WEIGHTS_SHA256_ATTR, Objective, OptunaReporter
from spnas.search._proposals import (
    SearchExhausted,
    propose_parallel,
    propose_serial,
    sample_parallel_code,
)
from spnas.search._resume import resume_failed_search
from spnas.search._retrain import pretrain_backbone, retrain
from spnas.search._sampler import SPNASSampler, get_decision
from spnas.search._state import (
    BARRIER_KINDS,
    KINDS,
    Best,
    Decision,
    Record,
    SearchState,
    verification_plan,
)
from spnas.search._summary import kendall_tau, summarize, verification_summary
from spnas.search._worker import (
    check_inputs,
    create_search_study,
    enable_verification,
    load_search_study,
    prepare_data,
    run_worker,
)

__all__ = [
    "BARRIER_KINDS",
    "CONFIG_ATTR",
    "KINDS",
    "WEIGHTS_ATTR",
    "WEIGHTS_SHA256_ATTR",
    "Best",
    "Decision",
    "Objective",
    "OptunaReporter",
    "Record",
    "SPNASSampler",
    "SearchConfig",
    "SearchExhausted",
    "SearchState",
    "build_search_engine",
    "check_inputs",
    "create_search_study",
    "enable_verification",
    "fetch_weights",
    "get_decision",
    "kendall_tau",
    "load_search_study",
    "prepare_data",
    "pretrain_backbone",
    "propose_parallel",
    "propose_serial",
    "resume_failed_search",
    "retrain",
    "run_worker",
    "sample_parallel_code",
    "summarize",
    "trial_note",
    "verification_plan",
    "verification_summary",
]
