"""The engine contract: every engine is built by name from its config section and implements
the same methods with the same signatures."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spnas.engines import ENGINE_REGISTRY, Engine, build_engine, engine_names
from spnas.exceptions import ConfigError

CONTRACT = ("build_model", "train_eval", "evaluate", "export")


@pytest.mark.parametrize("name", ["detectron2", "torchvision"])
def test_builtin_engines_implement_the_contract_with_its_signatures(name: str) -> None:
    engine = build_engine(name, show_progress=False)
    assert type(engine) is ENGINE_REGISTRY[name] and engine.name == name
    assert not engine.show_progress
    for method in CONTRACT:
        ours = inspect.signature(getattr(type(engine), method)).parameters
        contract = inspect.signature(getattr(Engine, method)).parameters
        assert list(ours) == list(contract), method
        for key, parameter in contract.items():
            assert ours[key].default == parameter.default, (method, key)


def test_engines_are_built_from_their_section_options() -> None:
    detectron2 = build_engine("detectron2", config="my.yaml", opts=["SOLVER.BASE_LR", 0.1])
    assert str(detectron2.config_file) == "my.yaml"
    assert detectron2.opts == ["SOLVER.BASE_LR", 0.1]
    torchvision = build_engine("torchvision", representation_size=64, box_batch_size_per_image=8)
    assert torchvision.representation_size == 64
    assert torchvision.detector_options == {"box_batch_size_per_image": 8}


def test_unknown_engines_and_options_name_the_key() -> None:
    assert engine_names() == ("detectron2", "torchvision")
    with pytest.raises(ConfigError, match=r"unknown engine 'nope', expected one of detectron2"):
        build_engine("nope")
    with pytest.raises(ConfigError, match=r"engine 'detectron2' has no option 'bogus'"):
        build_engine("detectron2", bogus=1)
    # A detectron2 YAML means nothing to the torchvision engine: refused, not ignored.
    with pytest.raises(ConfigError, match=r"engine 'torchvision' has no option 'config'"):
        build_engine("torchvision", config="my.yaml")
    with pytest.raises(ConfigError, match=r"'box_nms_thresh'='high': expected a number"):
        build_engine("torchvision", box_nms_thresh="high")


def test_choosing_an_engine_imports_no_other_engine() -> None:
    script = (
        "import json, sys; from spnas.engines import build_engine; build_engine('torchvision'); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert "spnas.engines.torchvision.engine" in loaded
    # detectron2._C is the placeholder `import spnas` installs (spnas.engines.detectron2.compat).
    assert {m for m in loaded if m.startswith(("detectron2", "spnas.engines.detectron2."))} == {
        "detectron2._C",
        "spnas.engines.detectron2.compat",
    }


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"name": "torchvision", "show_progress": False}, {"show_progress": False}),
        (
            {"name": "detectron2", "config": "my.yaml", "opts": ["SOLVER.BASE_LR", 0.1]},
            {"config_file": "my.yaml", "opts": ["SOLVER.BASE_LR", 0.1], "show_progress": True},
        ),
    ],
)
def test_a_study_engine_section_builds_its_engine(
    section: dict, expected: dict, tmp_path: Path
) -> None:
    from spnas.search import SearchConfig, build_search_engine

    config = SearchConfig.from_dict(
        {"study": {"name": "s", "workdir": str(tmp_path)}, "engine": section}
    )
    engine = build_search_engine(config)
    assert engine.name == section["name"]
    for key, value in expected.items():
        found = getattr(engine, key)
        assert (Path(found).name if key == "config_file" else found) == value, key


def test_a_study_naming_an_unknown_engine_is_refused(tmp_path: Path) -> None:
    from spnas.search import SearchConfig

    with pytest.raises(ConfigError, match=r"engine 'nope', expected one of detectron2, torch"):
        SearchConfig.from_dict({"study": {"name": "s"}, "engine": {"name": "nope"}})
