"""Every shell command and python block of README.md, docs/ (the site's pages: docs_commands.DOC_FILES) and
configs/detectron2/README.md runs as written, in a smoke form (tiny overrides: a few iterations, data subsets), in a
throwaway checkout beside ../shared.

SMOKE lists how each command is shrunk; NOT_RUN lists the commands that cannot run here, with the reason, and the
`--help` run standing in for them. A command in the docs that is in neither table fails
test_every_documented_command_is_listed: a new command needs a smoke form (or a reason) before it can be documented.
Python blocks run as they are (in-process, in the checkout); PY_SETUP names what a block needs first.
"""
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from conftest import require_detectron2
from docs_commands import documented, environment, make_checkout, place_torchvision_resnet50, write_coco_pair

TINY_CLS = "solver.max_iter=2 solver.batch_size=4 data.train_subset=8 data.val_subset=8 data.num_workers=0"
TINY_SYN = ("solver.max_iter=2 solver.batch_size=4 data.synthetic.train_per_class=1 data.synthetic.val_per_class=1 "
            "data.num_workers=0 train.tensorboard=false")
TINY_DET = "solver.max_iter=2 data.train.limit=4 test.max_images=2 train.progress=false"
SMOKE_CFG = "smoke_cls.yaml"  # what C stands for: a run the test makes with TINY_SYN into output/smoke_cls


@dataclass
class Smoke:
    add: str = ""                               # appended to the documented command
    subs: Dict[str, str] = field(default_factory=dict)  # placeholder word -> value (paths relative to the checkout)
    after: Tuple[str, ...] = ()                 # documented commands whose smoke form must have run first
    needs: Tuple[str, ...] = ()                 # "torchvision" (cached R-50 weights), "coco" (GT/DETECTIONS/DIR), "cls_run", "shared"
    creates: Tuple[str, ...] = ()               # files the command must leave (relative to the checkout)


QUICKSTART = "python3 tools/dev.py quickstart"
PRETRAIN = "python tools/train_cls.py --config configs/cls/cifar_resnet50_64px.yaml"
EXPORT = PRETRAIN + " --resume --eval-only --export r50_cifar.safetensors"
TRAIN_C = "python tools/train_cls.py --config C --resume"

SMOKE: Dict[str, Smoke] = {
    QUICKSTART: Smoke(add="solver.max_iter=2 data.train.num_images=4 data.val.num_images=2 train.progress=false",
                      creates=("output/quickstart/checkpoints/last.pt", "output/quickstart/eval.json")),
    "python tools/convert_weights.py --from torchvision --arch resnet50 tv_r50.pth r50.safetensors --verify":
        Smoke(needs=("tv_r50",), creates=("r50.safetensors",)),
    "python tools/train_cls.py": Smoke(add=TINY_SYN, creates=("output/cls_default/checkpoints/last.pt",)),
    "python tools/train_cls.py --config configs/cls/cifar_resnet20.yaml --data ../shared/data/cifar10":
        Smoke(add=TINY_CLS + " data.val_split=[test]", needs=("shared",)),
    TRAIN_C: Smoke(subs={"C": SMOKE_CFG}, needs=("smoke_cfg",), creates=("output/smoke_cls/checkpoints/best.pt",)),
    "python tools/train_cls.py --config C --eval-only --weights OUTPUT/checkpoints/best.pt":
        Smoke(subs={"C": SMOKE_CFG, "OUTPUT/checkpoints/best.pt": "output/smoke_cls/checkpoints/best.pt"},
              after=(TRAIN_C,)),
    "python tools/train_cls.py --config C --resume --eval-only --export r50_backbone.safetensors":
        Smoke(subs={"C": SMOKE_CFG}, after=(TRAIN_C,), creates=("r50_backbone.safetensors",)),
    "python tools/train_cls.py --weights OUTPUT/checkpoints/best.pt --export bb.safetensors":
        Smoke(subs={"OUTPUT/checkpoints/best.pt": "output/smoke_cls/checkpoints/best.pt"}, after=(TRAIN_C,),
              creates=("bb.safetensors",)),
    "python tools/train_det.py --config configs/bccd_frcnn_r50.yaml":
        Smoke(add=TINY_DET, needs=("shared", "torchvision"), creates=("output/bccd_frcnn_r50/eval.json",)),
    "python tools/eval_coco.py --gt GT.json --dt DETECTIONS.json --iou-type bbox segm --out stats.json":
        Smoke(needs=("coco",), creates=("stats.json",)),
    "python tools/predict.py --config configs/quickstart.yaml --checkpoint output/quickstart/checkpoints/last.pt --images DIR "
    "--output preds/": Smoke(needs=("coco",), after=(QUICKSTART,), creates=("preds",)),
    "python tools/predict.py --checkpoint output/quickstart/checkpoints/last.pt --images DIR --gt GT.json "
    "--output preds_gt/":
        Smoke(needs=("coco",), after=(QUICKSTART,), creates=("preds_gt",)),
    "python tools/export_detector.py --checkpoint output/quickstart/checkpoints/last.pt --format torchscript "
    "--output detector.pt":
        Smoke(after=(QUICKSTART,), creates=("detector.pt",)),
    PRETRAIN: Smoke(add=TINY_CLS, needs=("shared",)),
    EXPORT: Smoke(add=TINY_CLS, after=(PRETRAIN,), creates=("r50_cifar.safetensors",)),
    "python tools/train_det.py --config configs/bccd_frcnn_r50.yaml model.backbone.weights=r50_cifar.safetensors":
        Smoke(add=TINY_DET + " --output output/bccd_from_cifar", after=(EXPORT,),
              creates=("output/bccd_from_cifar/checkpoints/last.pt",)),
    "python tools/eval_coco.py --gt shapes_val/annotations.json --dt run1/inference/coco_instances_results.json "
    "--iou-type bbox segm --out stats.json":
        Smoke(subs={"shapes_val/annotations.json": "GT.json",
                    "run1/inference/coco_instances_results.json": "DETECTIONS.json"}, needs=("coco",)),
}

TRAIN_D2_HELP = "python tools/train_d2.py --help"
NOT_RUN: Dict[str, Tuple[str, Optional[str]]] = {  # command -> (why it cannot run here, what runs instead)
    "python3 tools/dev.py test": ("runs the whole test suite, this test included", None),
    "torchrun --nproc_per_node=8 tools/train_cls.py --config configs/cls/imagenet_resnet50.yaml --data /imagenet":
        ("8 processes on ImageNet (/imagenet is absent here)", "python tools/train_cls.py --help"),
    "python tools/train_det.py --config configs/frcnn_r101.yaml [solver.max_iter=200 ...] --output output/r101":
        ("COCO 2017 in datasets/coco and ImageNet weights (a download); the missing-COCO message is tested in "
         "test_configs_load.py", "python tools/train_det.py --help"),
    'pip install -e ".[detectron2]"': ("a network install that compiles detectron2", None),
    "python -m pytest tests/test_reliability_*.py": ("runs other test files (minutes); they run in the suite", None),
    "scripts/install_detectron2.sh .venv/bin/python [../shared/vendor/detectron2-02b5c4e2.tar.gz]":
        ("compiles detectron2 (minutes); tools/dev.py test runs it", None),
    "python tools/train_d2.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_1x.yaml --train-json train.json "
    "--train-images train/ --test-json val.json --test-images val/ MODEL.RESBACKBONES.WEIGHTS resnet50_tv.safetensors "
    "OUTPUT_DIR runs/d2": ("a detectron2 training on the user's data; tests/test_detectron2_train.py trains through "
                           "tools/train_d2.py", TRAIN_D2_HELP),
    "python tools/train_d2.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_1x.yaml --train-json "
    "shapes_train/annotations.json --train-images shapes_train/images --test-json shapes_val/annotations.json "
    "--test-images shapes_val/images <opts> OUTPUT_DIR run1": ("the recorded 16-minute detectron2 run", TRAIN_D2_HELP),
}

PY_SETUP = {"README.md#python2": ("torchvision",), "docs/weights.md#python1": ("torchvision", EXPORT),
            "configs/detectron2/README.md#python1": ("detectron2",), "docs/detectron2.md#python1": ("detectron2",)}

COMMANDS, BLOCKS = documented()


def test_every_documented_command_is_listed():
    listed = set(SMOKE) | set(NOT_RUN)
    new = sorted(set(COMMANDS) - listed)
    assert not new, f"documented but without a smoke form in tests/test_docs_commands.py (SMOKE or NOT_RUN): {new}"
    stale = sorted(listed - set(COMMANDS))
    assert not stale, f"listed in tests/test_docs_commands.py but no longer documented: {stale}"


class Checkout:
    """One throwaway checkout for the module; each prerequisite is made once."""

    def __init__(self, root: Path):
        self.root, self.work = root, make_checkout(root)
        self.env = environment(root)
        self.done: Dict[str, str] = {}
        self.failed: Dict[str, str] = {}

    def need(self, what: str) -> None:
        if what in self.done:
            return
        if what in self.failed:  # re-running it would hide its error behind its leftovers ("not empty")
            pytest.fail(f"needs {what!r}, which failed earlier in this module: {self.failed[what]}")
        try:
            self._make(what)
        except Exception as error:
            self.failed[what] = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise

    def _make(self, what: str) -> None:
        if what in SMOKE:
            self.run_command(what)
        elif what == "shared":
            from conftest import require_shared
            require_shared("data/cifar10")
            require_shared("data/bccd")
        elif what == "torchvision":
            place_torchvision_resnet50(self.root / "torch_home")
        elif what == "tv_r50":
            import torch
            import torchvision
            torch.save(torchvision.models.resnet50().state_dict(), self.work / "tv_r50.pth")
        elif what == "coco":
            write_coco_pair(self.work)
        elif what == "smoke_cfg":
            (self.work / SMOKE_CFG).write_text(
                "train: {output_dir: output/smoke_cls, progress: false, tensorboard: false}\n"
                "data: {num_workers: 0, synthetic: {train_per_class: 1, val_per_class: 1}}\n"
                "solver: {max_iter: 2, batch_size: 4}\n")
        elif what == "detectron2":
            require_detectron2()
        else:
            raise AssertionError(f"unknown prerequisite {what!r}")
        self.done[what] = "ok"

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def run_command(self, doc: str) -> None:
        smoke = SMOKE[doc]
        for prerequisite in smoke.needs + smoke.after:
            self.need(prerequisite)
        words = shlex.split(doc)
        assert set(smoke.subs) <= set(words), f"SMOKE[{doc!r}].subs names words the command does not have"
        words = [smoke.subs.get(w, w) for w in words]
        command = shlex.join(words) + (" " + smoke.add if smoke.add else "")
        done = self.run(command)
        assert done.returncode == 0, (f"documented command failed in its smoke form (exit {done.returncode}):\n"
                                      f"  {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        for path in smoke.creates:
            assert (self.work / path).exists(), f"{command} did not write {path}"
        self.done[doc] = command


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return Checkout(tmp_path_factory.mktemp("docs"))


def _id(command: str) -> str:
    return command.replace("python ", "").replace("tools/", "")[:90]


@pytest.mark.parametrize("doc", sorted(set(SMOKE) & set(COMMANDS), key=list(COMMANDS).index), ids=_id)
def test_documented_command_runs(checkout, doc):
    checkout.need(doc)


@pytest.mark.parametrize("doc", sorted({h for _, h in NOT_RUN.values() if h}), ids=_id)
def test_not_run_commands_have_working_help(checkout, doc):
    done = checkout.run(doc)
    assert done.returncode == 0 and "usage" in done.stdout.lower(), done.stderr[-2000:]


@pytest.mark.parametrize("name", list(BLOCKS))
def test_documented_python_block_runs(checkout, name, monkeypatch):
    for prerequisite in PY_SETUP.get(name, ()):
        checkout.need(prerequisite)
    monkeypatch.chdir(checkout.work)
    monkeypatch.setenv("TORCH_HOME", checkout.env["TORCH_HOME"])
    monkeypatch.setenv("RESBACKBONES_UNCHECKED_TORCHVISION_CACHE", "1")  # random stand-ins under torchvision's names
    exec(compile(BLOCKS[name], name, "exec"), {"__name__": "__docs__"})

