"""SP-NAS on Optuna: the sampler, its state machine, the objective, and workers.

Public API:

- :class:`SPNASSampler` — an ``optuna.samplers.BaseSampler`` implementing Algorithm 1;
- :class:`SearchConfig` — the validated study YAML;
- :class:`SearchState`, :func:`propose_serial`, :func:`propose_parallel` — building blocks for
  your own samplers;
- :class:`Decision`, :func:`get_decision` — what a trial trains, inside your own objective;
- :func:`summarize`, :func:`verification_summary` — the search as plain data (``spnas status``);
  :func:`paired_interval`, :func:`t_quantile` — the paired 95 % interval its verdict rests on;
- :func:`retrain` — a network retrained from scratch at equal training (verification);
- :class:`Objective`, :func:`check_settings`, :func:`create_search_study`,
  :func:`load_search_study`, :func:`join_search_study`, :func:`check_worker_inputs`,
  :func:`run_worker`, :func:`prepare_data` — what ``spnas search`` and ``spnas worker`` run
  (the data set is validated once, at creation: ``DATA_ATTR``);
- :func:`launch_workers`, :class:`Launched`, :func:`worker_gpus` — local worker processes with
  stop signals forwarded to them (``spnas search``, ``spnas verify``);
  :func:`stop_before_joining`, :func:`stopped_by`, :data:`STOPPED_EXIT` — a worker process's
  stop and exit status (``spnas worker``);
- :func:`collect_garbage` — what ``spnas gc`` runs (leftovers of killed workers);
- :func:`architecture_distributions`, :func:`architecture_values` — a trial's architecture as
  Optuna params (for Optuna's analysis, and its own samplers on the same space).

The names load on first use: a process that only decides (the sampler, ``get_decision``, a
light worker of ``benchmarks/scaling.py``) imports no torch.
"""

from __future__ import annotations

from spnas._lazy import lazy_getattr

_API = {
    "BARRIER_KINDS": "_state",
    "Best": "_state",
    "CONFIG_ATTR": "_config",
    "DATA_ATTR": "_config",
    "Decision": "_state",
    "KINDS": "_state",
    "Launched": "_launch",
    "Objective": "_objective",
    "OptunaReporter": "_objective",
    "Record": "_state",
    "SPNASSampler": "_sampler",
    "STOPPED_EXIT": "_launch",
    "SearchConfig": "_config",
    "SearchExhausted": "_proposals",
    "SearchState": "_state",
    "TrialKind": "_state",
    "UNPRUNABLE_KINDS": "_state",
    "WEIGHTS_ATTR": "_artifacts",
    "WEIGHTS_SHA256_ATTR": "_artifacts",
    "architecture_distributions": "_params",
    "architecture_values": "_params",
    "build_search_engine": "_objective",
    "check_settings": "_checks",
    "check_inputs": "_worker",
    "check_worker_inputs": "_worker",
    "collect_garbage": "_gc",
    "create_search_study": "_worker",
    "enable_verification": "_worker",
    "fetch_weights": "_objective",
    "get_decision": "_sampler",
    "kendall_tau": "_summary",
    "join_search_study": "_worker",
    "launch_workers": "_launch",
    "load_search_study": "_worker",
    "paired_interval": "_stats",
    "prepare_data": "_worker",
    "pretrain_backbone": "_retrain",
    "propose_parallel": "_proposals",
    "propose_serial": "_proposals",
    "resume_failed_search": "_resume",
    "retrain": "_retrain",
    "run_worker": "_worker",
    "sample_parallel_code": "_proposals",
    "stop_before_joining": "_signals",
    "stopped_by": "_signals",
    "summarize": "_summary",
    "t_quantile": "_stats",
    "trial_note": "_notes",
    "verification_plan": "_state",
    "verification_summary": "_summary",
    "worker_gpus": "_launch",
}

__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
