"""The config system: YAML + _base_ + overrides, typed validation with one-line errors naming the key."""
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Tuple

import pytest

from resbackbones.config import ConfigError, dump_yaml, load_config, to_dict


@dataclass
class Solver:
    base_lr: float = 0.1
    steps: Tuple[int, ...] = (30, 60)
    policy: Literal["step", "cosine"] = "step"
    clip: Optional[float] = None
    size: Tuple[int, int] = (224, 224)


@dataclass
class Cfg:
    solver: Solver = field(default_factory=Solver)
    epochs: int = 3
    names: List[str] = field(default_factory=list)
    amp: bool = False


@pytest.fixture
def files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("solver:\n  base_lr: 0.2\n  steps: [1, 2]\nepochs: 5\nnames: [a]\n")
    (tmp_path / "sub" / "child.yaml").write_text("_base_: ../base.yaml\nsolver:\n  policy: cosine\n")
    return tmp_path


def test_defaults_without_file():
    assert load_config(Cfg) == Cfg()


def test_base_deep_merge_child_wins_and_overrides(files):
    cfg = load_config(Cfg, files / "sub" / "child.yaml", ["solver.steps=[60000,80000]", "solver.clip=1", "amp=true"])
    assert cfg.solver == Solver(base_lr=0.2, steps=(60000, 80000), policy="cosine", clip=1.0)
    assert isinstance(cfg.solver.clip, float) and cfg.epochs == 5 and cfg.names == ["a"] and cfg.amp is True


def test_base_list_later_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 1\nsolver: {base_lr: 0.5}\n")
    (tmp_path / "b.yaml").write_text("epochs: 2\n")
    (tmp_path / "c.yaml").write_text("_base_: [a.yaml, b.yaml]\n")
    cfg = load_config(Cfg, tmp_path / "c.yaml")
    assert cfg.epochs == 2 and cfg.solver.base_lr == 0.5


def test_exponent_without_dot_is_a_float(files):
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; a float field takes it as the number users mean.
    cfg = load_config(Cfg, files / "base.yaml", ["solver.base_lr=1e-4", "solver.clip=2E3"])
    assert cfg.solver.base_lr == 1e-4 and cfg.solver.clip == 2000.0


def test_dump_round_trip(files, tmp_path):
    cfg = load_config(Cfg, files / "sub" / "child.yaml", ["solver.clip=2.5"])
    dump_yaml(cfg, tmp_path / "out.yaml")
    assert load_config(Cfg, tmp_path / "out.yaml") == cfg
    assert to_dict(cfg)["solver"]["steps"] == [1, 2]


@pytest.mark.parametrize(
    "override, words",
    [
        ("solver.base_lrr=1", ["'solver.base_lrr'", "did you mean 'solver.base_lr'"]),
        ("solvr.base_lr=1", ["'solvr.base_lr'", "did you mean 'solver.base_lr'"]),
        ("solver.base_lr=abc", ["'solver.base_lr'", "expected float", "'abc'"]),
        ("epochs=1.5", ["'epochs'", "expected int", "1.5"]),
        ("epochs=true", ["'epochs'", "expected int"]),
        ("solver.policy=linear", ["'solver.policy'", "'step'", "'cosine'", "'linear'"]),
        ("solver.steps=[1,x]", ["'solver.steps[1]'", "expected int", "'x'"]),
        ("solver.size=[1,2,3]", ["'solver.size'", "list [int, int]"]),
        ("amp", ["bad override 'amp'", "key=value"]),
        ("=3", ["bad override '=3'"]),
    ],
)
def test_override_errors_name_the_key(files, override, words):
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, files / "base.yaml", [override])
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(Cfg, tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("solver:\n  bse_lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'solver.bse_lr' \(did you mean 'solver.base_lr'"):
        load_config(Cfg, tmp_path / "typo.yaml")
    (tmp_path / "nobase.yaml").write_text("_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match="gone.yaml"):
        load_config(Cfg, tmp_path / "nobase.yaml")
    (tmp_path / "broken.yaml").write_text("solver: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, tmp_path / "broken.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Cfg, tmp_path / "loop.yaml")


def test_overrides_act_together_in_any_order():
    """Cross-field checks see all overrides: ann_file before image_root loads; a real error names its override."""
    from resbackbones.config.det import DetTrainConfig

    both = ["data.train.kind=coco", "data.train.ann_file=a.json", "data.train.image_root=imgs"]
    for order in (both, [both[0], both[2], both[1]]):
        cfg = load_config(DetTrainConfig, None, order)
        assert (cfg.data.train.ann_file, cfg.data.train.image_root) == ("a.json", "imgs")
    with pytest.raises(ConfigError, match=r"^override data.train.ann_file='a.json': .*data.train.image_root is "
                                          r"required with data.train.ann_file"):
        load_config(DetTrainConfig, None, ["data.train.kind=coco", "data.train.ann_file=a.json", "solver.base_lr=0.1"])
    with pytest.raises(ConfigError, match=r"^override solver.base_lr=-1"):  # broken later, fixed earlier: named
        load_config(DetTrainConfig, None, both[:2] + ["solver.base_lr=-1", both[2]])
