"""Trial kinds are a ``str`` Enum: what is stored, shown and compared stays the old strings."""

from __future__ import annotations

import json

import optuna
import pytest

from spnas.exceptions import ConfigError
from spnas.search import KINDS, Decision, TrialKind, get_decision

#: The values studies have always stored in ``spnas:kind``: old studies must still load.
STORED = (
    "seed",
    "serial",
    "reignite",
    "parallel_seed",
    "parallel",
    "final",
    "control",
    "verify",
    "exhausted",
    "idle",
)


def test_every_kind_is_its_stored_string() -> None:
    assert [kind.value for kind in TrialKind] == list(STORED) and tuple(TrialKind) == KINDS
    for kind, text in zip(TrialKind, STORED, strict=True):
        assert kind == text and hash(kind) == hash(text) and TrialKind(text) is kind
        # Messages, tables and JSON show the value, never ``TrialKind.SEED``.
        assert str(kind) == f"{kind}" == f"{kind:<13}".strip() == text
        assert json.dumps({"kind": kind}) == json.dumps({"kind": text})


def test_a_decision_stores_the_plain_string_and_reads_an_old_one() -> None:
    # In memory, what is set is what is read back: a member would come back a member.
    storage = optuna.storages.InMemoryStorage()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE])
    trial_id = storage.create_new_trial(study_id)
    for key, value in Decision("serial", round=2).to_attrs().items():
        storage.set_trial_system_attr(trial_id, key, value)
    stored = storage.get_trial(trial_id).system_attrs["spnas:kind"]
    assert type(stored) is str and stored == "serial"
    # Trials written before the Enum (plain strings) read as the member.
    decision = get_decision(storage.get_trial(trial_id))
    assert decision.kind is TrialKind.SERIAL and decision.round == 2
    assert Decision.from_attrs({"spnas:kind": "parallel_seed"}).kind is TrialKind.PARALLEL_SEED


def test_an_unknown_kind_names_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"trial kind 'seeds': expected one of seed, serial, "):
        Decision.from_attrs({"spnas:kind": "seeds"})
