"""Keys renamed by the shared config vocabulary (issue 15 step 7): an old key in a YAML file or a key=value override
is refused by the tools with one line naming the new key (exit 2, no alias accepted); a run folder written before
the rename (config.yaml and checkpoint["config"] in the old keys) still resumes and exports, and a detection run's
config.yaml in the old keys is still found beside its checkpoint, read through config/legacy.py."""

import pytest
import torch
import yaml

from conftest import REPO
from resbackbones.config import load_config, to_dict
from resbackbones.config.cls import ClsConfig
from resbackbones.config.det import DetTrainConfig
from resbackbones.config.legacy import renamed_keys
from resbackbones.data.synthetic_cls import write_image_folder
from resbackbones.evaluation.inference import find_detector_config
from resbackbones.weights import WeightsMetadata, load_with_metadata
import train_cls  # noqa: E402
import train_det  # noqa: E402

CLS_RENAMED = renamed_keys(ClsConfig)
DET_RENAMED = renamed_keys(DetTrainConfig)
SOLVER = {"solver.lr", "solver.label_smoothing", "solver.l1", "solver.l2", "solver.ims_per_batch", "solver.policy",
          "solver.warmup_iters"}
TINY = ["solver.epochs=2", "solver.batch_size=8", "data.num_workers=0", "train.progress=false",
        "train.tensorboard=false", "model.backbone.name=cifar_resnet",
        "model.backbone.options={depth: 8, widths: [4, 8, 8]}", "--device", "cpu"]


def _nested(dotted: str, value) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_every_renamed_cls_key_is_listed():
    assert {old for old, _ in CLS_RENAMED} == {
        "model.arch", "model.weights", "model.options", "data.workers", "data.hflip", "train.print_freq",
        "train.threads"} | SOLVER


# Each tool with the arguments of a run that would start (train_det needs a config with data).
TOOLS = {"cls": (train_cls, []), "det": (train_det, ["--config", str(REPO / "configs" / "quickstart.yaml")])}
CASES = [("cls", old, new) for old, new in CLS_RENAMED] + [("det", old, new) for old, new in DET_RENAMED]


@pytest.mark.parametrize("task, old, new", CASES, ids=[f"{task}:{old}" for task, old, _ in CASES])
def test_old_key_refused_in_yaml_and_override(task, old, new, tmp_path, capsys):
    tool, run_args = TOOLS[task]
    expected = f"config key '{old}' was renamed: use '{new}'"
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump(_nested(old, 1)))
    assert tool.main(["--config", str(config), "--output", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys)
    assert expected in line and str(config) in line, line
    assert tool.main([*run_args, "--output", str(tmp_path / "b"), f"{old}=1"]) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_renamed_key_names_the_value_rule(capsys, tmp_path):
    assert train_cls.main(["--output", str(tmp_path / "o"), "data.hflip=false"]) == 2
    assert _one_error_line(capsys).endswith("use 'data.flip_prob' (true = 0.5, false = 0.0)")


def _to_old_keys(config: dict) -> dict:
    """A config dict as tools/train_cls.py stored it before the rename (the inverse of config/legacy.py)."""
    old = yaml.safe_load(yaml.safe_dump(config))
    for old_key, new_key in CLS_RENAMED:
        *parents, leaf = new_key.split(".")
        node = old
        for part in parents:
            node = node.get(part, {})
        if leaf not in node:
            continue
        value = node.pop(leaf)
        value = {"data.flip_prob": lambda v: v > 0, "model.backbone.weights": lambda v: v or None}.get(
            new_key, lambda v: v)(value)
        *old_parents, old_leaf = old_key.split(".")
        target = old
        for part in old_parents:
            target = target.setdefault(part, {})
        target[old_leaf] = value
    for section in ("loss", "backbone"):
        old.pop(section, None)
        old.get("model", {}).pop(section, None)
    old["solver"]["clip_grad_norm"] = old["solver"]["clip_grad_norm"] or None
    return old


def test_run_folder_in_old_keys_resumes_and_exports(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", train_per_class=2, val_per_class=1, image_size=32)
    out = tmp_path / "run"
    assert train_cls.main(["--data", str(data), "--output", str(out), *TINY, "solver.epochs=1"]) == 0
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["config"] = _to_old_keys(state["config"])
    assert "arch" in state["config"]["model"] and state["config"]["solver"]["lr"] == 0.1
    torch.save(state, last)
    (out / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    capsys.readouterr()
    # What projects/transfer/run.sh does with a pretraining folder written before the rename.
    assert train_cls.main(["--data", str(data), "--output", str(out), *TINY, "--export",
                           str(tmp_path / "resumed.safetensors"), "--resume"]) == 0  # one more epoch
    assert "resumed from" in capsys.readouterr().out
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["model"]["backbone"]["name"] == "cifar_resnet" and "arch" not in stored["model"]
    assert (tmp_path / "resumed.safetensors").is_file() and torch.load(last, weights_only=True)["epoch"] == 2
    # Export of a checkpoint whose recorded config is in the old keys.
    state = torch.load(last, weights_only=True)
    state["config"] = _to_old_keys(state["config"])
    torch.save(state, last)
    assert train_cls.main(["--weights", str(last), "--export", str(tmp_path / "again.safetensors"),
                           "--device", "cpu"]) == 0
    _, raw = load_with_metadata(tmp_path / "again.safetensors")
    meta = WeightsMetadata.from_dict(raw)
    assert meta.arch == "cifar_resnet" and list(meta.pixel_mean) == to_dict(ClsConfig())["data"]["mean"]


def test_every_renamed_det_key_is_listed():
    # one solver and one train section (config/common.py) for both tasks
    assert {old for old, _ in DET_RENAMED} == SOLVER | {"train.print_freq", "train.threads", "model.input.channels_last",
                                                  "test.ims_per_batch"}


def test_det_run_config_in_old_keys_is_read_beside_its_checkpoint(tmp_path):
    """predict / eval_coco / train_det --eval-only find the config.yaml of a run folder written before the rename."""
    stored = to_dict(load_config(DetTrainConfig, REPO / "configs" / "quickstart.yaml"))
    solver = stored["solver"]
    solver["ims_per_batch"], solver["policy"], solver["warmup_iters"] = (
        solver.pop("batch_size"), solver.pop("schedule"), solver.pop("warmup"))
    for key in ("warmup_method", "reference_batch_size", "epochs", "unit", "warmup_unit", "min_lr_factor"):
        del solver[key]
    stored["test"]["amp"] = ""
    stored["test"]["ims_per_batch"] = stored["test"].pop("batch_size")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    cfg, source = find_detector_config(tmp_path / "last.pt")
    assert source == str(tmp_path / "config.yaml")
    assert (cfg.solver.batch_size, cfg.solver.schedule, cfg.solver.warmup, cfg.test.amp, cfg.test.batch_size) == (
        solver["ims_per_batch"], solver["policy"], solver["warmup_iters"], None, stored["test"]["ims_per_batch"])
