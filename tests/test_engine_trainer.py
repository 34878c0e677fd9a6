"""ClsTrainer in-process: NaN loss stops training with a message and keeps the last good checkpoint;
the default (no-argument) configuration runs on the embedded synthetic data."""
import numpy as np
import pytest
import torch

from resbackbones.config import from_dict
from resbackbones.config.cls import ClsConfig
from resbackbones.data.synthetic_cls import generate, write_image_folder
from resbackbones.engine.checkpoint import load_checkpoint
from resbackbones.engine.cls_trainer import ClsTrainer
from resbackbones.engine.tool_errors import TrainingDiverged


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("syn") / "shapes", train_per_class=8, val_per_class=2)


def tiny_cfg(data, out, **solver):
    return from_dict(ClsConfig, {
        "model": {"backbone": {"name": "cifar_resnet", "options": {"depth": 8, "widths": [4, 8, 8]}}},
        "data": {"root": str(data), "num_workers": 0},
        "solver": {"batch_size": 16, "epochs": 2, **solver},
        "train": {"output_dir": str(out), "progress": False, "tensorboard": False, "num_threads": 1},
    })


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    trainer = ClsTrainer(tiny_cfg(data, tmp_path))
    trainer.train(trainer.data_iter(), trainer.iters_per_epoch)  # the epoch's end evaluates and saves
    good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for group in trainer.optimizer.param_groups:
        group["lr"] = float("inf")
    trainer.scheduler.base_lrs = [float("inf")] * len(trainer.scheduler.base_lrs)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf).*last good checkpoint is kept: .*last.pt"):
        trainer.train(trainer.data_iter(), trainer.max_iter)
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(kept[k], good[k]) for k in good)


def test_synthetic_data_is_deterministic_and_balanced():
    images, labels = generate(3, image_size=32, seed=7)
    again, _ = generate(3, image_size=32, seed=7)
    other, _ = generate(3, image_size=32, seed=8)
    assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
    assert (images == again).all() and not (images == other).all()
    assert sorted(labels.tolist()) == sorted(list(range(10)) * 3)


def test_default_config_is_the_synthetic_run(monkeypatch, tmp_path):
    monkeypatch.setenv("RESBACKBONES_CACHE", str(tmp_path / "cache"))
    cfg = ClsConfig()
    assert cfg.data.root is None and cfg.model.backbone.name == "cifar_resnet20"
    small = from_dict(ClsConfig, {"data": {"synthetic": {"train_per_class": 4, "val_per_class": 2}, "num_workers": 0},
                                  "model": {"backbone": {"options": {"widths": [4, 8, 8]}}},
                                  "solver": {"epochs": 1, "batch_size": 8},
                                  "train": {"output_dir": str(tmp_path / "out"), "progress": True, "num_threads": 1}})
    row = ClsTrainer(small).fit()
    assert row["epoch"] == 1 and row["val_count"] == 20
    for name in ("config.yaml", "metrics.csv", "metrics.jsonl", "curves.png", "checkpoints/last.pt"):
        assert (tmp_path / "out" / name).is_file(), name


def test_init_weights_from_exported_backbone_and_from_checkpoint(data, tmp_path):
    """--export writes full WeightsMetadata; build_classifier(weights=) reads the export and the checkpoint."""
    import resbackbones as rb
    from resbackbones.weights import WeightsMetadata

    trainer = ClsTrainer(tiny_cfg(data, tmp_path / "a"))
    trainer.train(trainer.data_iter(), trainer.iters_per_epoch)
    path = trainer.export_backbone(str(tmp_path / "bb.safetensors"), metrics={"val_top1": 12.5})
    _, raw = rb.weights.load_with_metadata(path)
    meta = WeightsMetadata.from_dict(raw)
    assert (meta.arch, meta.source, meta.input_format, meta.pixel_scale, meta.num_classes) == (
        "cifar_resnet", "resbackbones train_cls", "RGB", 1.0, 10)
    assert meta.pixel_mean == pytest.approx((0.4914, 0.4822, 0.4465)) and meta.stride_in_1x1 is None
    assert (meta.extra["val_top1"], meta.extra["iterations"], meta.extra["data"]) == ("12.50", str(trainer.iter), str(data))
    fresh = rb.build_classifier("cifar_resnet", num_classes=10, depth=8, widths=[4, 8, 8], weights=str(path))
    for key, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[key], value)
    assert fresh.weights_metadata == meta
    trainer.save()
    checkpoint = str(tmp_path / "a" / "checkpoints" / "last.pt")
    other = rb.build_classifier("cifar_resnet", num_classes=10, depth=8, widths=[4, 8, 8], weights=checkpoint)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in trainer.model.state_dict().items())
    assert (other.weights_metadata.source, other.weights_metadata.pixel_std) == (meta.source, meta.pixel_std)


def _limited_cfg(data, out, limit):
    """tiny_cfg, deterministic, with train.time_limit_s=limit (1e-9: stops after the first step)."""
    c = tiny_cfg(data, out)
    c.train.deterministic, c.train.time_limit_s = True, limit
    return c


def test_time_limit_stops_with_a_resumable_checkpoint(data, tmp_path):
    """train.time_limit_s: training stops after the first step past the limit (inside epoch 1 of 2) with a
    mid-epoch checkpoint; --resume without the limit ends bit-identical to an uninterrupted run."""
    ref = ClsTrainer(_limited_cfg(data, tmp_path / "ref", 0.0))
    ref.fit()
    stopped = ClsTrainer(_limited_cfg(data, tmp_path / "run", 1e-9))  # any step takes longer: stops after one
    assert stopped.fit() == {} and stopped.iter == 1 < stopped.iters_per_epoch
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    loop = state["trainer"]
    assert loop["iteration"] == 1 and loop["hooks"]["EpochBoundary"]["sums"]["count"] == 16  # the epoch so far
    assert loop["train_seconds"] > 1e-9 and state["config"]["train"]["time_limit_s"] == 1e-9
    resumed = ClsTrainer(_limited_cfg(data, tmp_path / "run", 0.0), resume=True)
    assert resumed.iter == 1 and resumed.train_seconds == loop["train_seconds"]
    row = resumed.fit()
    assert row["epoch"] == 2 and resumed.iter == ref.iter
    assert all(torch.equal(v, ref.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())


def test_a_checkpoint_of_the_layout_before_the_schema_still_resumes(data, tmp_path):
    """A mid-epoch last.pt as train_cls wrote it before the one checkpoint schema (flat keys global_iter, epoch,
    iter_in_epoch, partial epoch sums) resumes to the same weights as an uninterrupted run (weights.checkpoint.upgrade
    reads it)."""
    ref = ClsTrainer(_limited_cfg(data, tmp_path / "ref", 0.0))
    ref.fit()
    ClsTrainer(_limited_cfg(data, tmp_path / "run", 1e-9)).fit()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    loop, extras = state["trainer"], state["extras"]
    old = {key: state[key] for key in ("model", "optimizer", "scheduler", "scaler", "ema", "rng", "config", "task")}
    old.update(epoch=0, iter_in_epoch=loop["iteration"], global_iter=loop["iteration"],
               train_seconds=loop["train_seconds"],
               partial=loop["hooks"]["EpochBoundary"]["sums"], config_changes=[], arch=extras["arch"],
               num_classes=extras["num_classes"], classes=extras["classes"], best_metric=None,
               best_metric_name="val_top1", best_iteration=None)
    torch.save(old, last)
    resumed = ClsTrainer(_limited_cfg(data, tmp_path / "run", 0.0), resume=True)
    assert resumed.iter == 1
    assert resumed.fit()["train_loss"] == ref.epochs_hook.last_row["train_loss"]
    assert all(torch.equal(v, ref.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())
