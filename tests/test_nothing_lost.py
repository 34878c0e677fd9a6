"""Nothing lost (issue 16): a run never replaces another run's files, two writers never share an output folder,
evaluation leaves the run's files alone, and no tool writes over its inputs or gives two inputs one output name.
Each case checks the bytes of the files that must survive, not only the exit code."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import REPO
from resbackbones.engine.outputs import OutputError, RunLock, claim_run_dir, refuse_inputs, unique_targets
import convert_weights  # noqa: E402
import eval_coco  # noqa: E402
import predict  # noqa: E402
import train_cls  # noqa: E402
import train_det  # noqa: E402

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
CLS = ["solver.max_iter=2", "solver.batch_size=4", "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
       "data.num_workers=0", "train.progress=false", "train.tensorboard=false", "--device", "cpu"]


def _det(root, out, *extra):
    return ["--config", QUICKSTART, "--output", str(out), "--device", "cpu", "solver.max_iter=1",
            "data.train.num_images=2", f"data.train.root={root / 'train'}", "data.val.num_images=1",
            f"data.val.root={root / 'val'}", "solver.batch_size=2", "train.progress=false", *extra]


def _snapshot(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RESBACKBONES_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# -- run folders ------------------------------------------------------------------------------------------------
def test_claim_rules(tmp_path):
    run = tmp_path / "run"
    claim_run_dir(run, resume=False, overwrite=False, run_files=()).release()  # new: fine, and created
    claim_run_dir(run, resume=False, overwrite=False, run_files=()).release()  # only .lock inside: still empty
    (run / "last.pt").write_text("old")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"not empty \(last.pt, notes.txt\).*--resume.*--overwrite"):
        claim_run_dir(run, resume=False, overwrite=False, run_files=("last.pt",))
    claim_run_dir(run, resume=True, overwrite=False, run_files=("last.pt",)).release()
    assert (run / "last.pt").read_text() == "old"
    claim_run_dir(run, resume=False, overwrite=True, run_files=("last.pt", "eval.json")).release()
    assert not (run / "last.pt").exists() and (run / "notes.txt").read_text() == "mine"  # only the run's own files
    with pytest.raises(OutputError, match="give one"):
        claim_run_dir(run, resume=True, overwrite=True, run_files=())
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        claim_run_dir(tmp_path / "file", resume=False, overwrite=False, run_files=())
    held = RunLock(run)
    with pytest.raises(OutputError, match="in use by a running job"):
        claim_run_dir(run, resume=True, overwrite=False, run_files=())
    held.release()


def test_train_cls_new_run_never_replaces_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cls.main(["--output", str(out), *CLS]) == 0
    before = _snapshot(out)
    assert train_cls.main(["--output", str(out), *CLS, "solver.base_lr=0.5"]) == 2
    assert "not empty" in _error(capsys) and _snapshot(out) == before
    # --eval-only (also with --resume) leaves config.yaml, metrics and checkpoints as they are
    assert train_cls.main(["--output", str(out), *CLS, "--eval-only", "--weights",
                           str(out / "checkpoints" / "best.pt"), "data.val_subset=3"]) == 0
    assert train_cls.main(["--output", str(out), *CLS, "--resume", "--eval-only", "data.val_subset=3"]) == 0
    assert _snapshot(out) == before
    # --export never over a checkpoint it comes from
    assert train_cls.main(["--output", str(out), *CLS, "--resume", "--eval-only", "--export",
                           str(out / "checkpoints" / "last.pt")]) == 2
    assert "destroy the input" in _error(capsys) and _snapshot(out) == before
    # --resume of the finished run, and --overwrite, are allowed
    assert train_cls.main(["--output", str(out), *CLS, "--resume"]) == 0
    assert train_cls.main(["--output", str(out), *CLS, "--overwrite", "solver.max_iter=1"]) == 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["global_iter"] == 1


def test_second_writer_is_refused_while_the_first_runs(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom resbackbones.engine.outputs import claim_run_dir\n"
         "lock = claim_run_dir(sys.argv[1], resume=False, overwrite=False, run_files=())\n"
         "print('locked', flush=True)\ntime.sleep(120)\n", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train_cls.main(["--output", str(out), *CLS, "--resume"]) == 2
        assert f"in use by a running job (pid {holder.pid}" in _error(capsys)
        assert train_det.main(["--config", QUICKSTART, "--output", str(out), "--resume"]) == 2
        assert "in use" in _error(capsys)
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    claim_run_dir(out, resume=True, overwrite=False, run_files=()).release()


def test_forked_worker_outliving_a_killed_run_does_not_hold_its_folder(tmp_path):
    """A DataLoader worker is a fork: it must not keep the flock after its parent is killed (the CI flake of
    test_kill9_and_resume, where --resume found the folder 'in use' by the dead run's orphaned worker)."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom resbackbones.engine.outputs import claim_run_dir\n"
         "lock = claim_run_dir(sys.argv[1], resume=False, overwrite=False, run_files=())\n"
         "child = os.fork()\n"
         "if child == 0:\n    time.sleep(60)\n    os._exit(0)\n"
         "print(child, flush=True)\ntime.sleep(120)\n", str(out)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(OutputError, match=f"in use by a running job \\(pid {holder.pid}"):
            claim_run_dir(out, resume=True, overwrite=False, run_files=())  # the parent still holds it
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the orphaned child still runs...
        claim_run_dir(out, resume=True, overwrite=False, run_files=()).release()  # ...and holds nothing
    finally:
        holder.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_train_det_new_run_and_eval_only(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_det.main(_det(tmp_path, out)) == 0
    before = _snapshot(out)
    assert train_det.main(_det(tmp_path, out, "solver.base_lr=0.1")) == 2
    assert "not empty" in _error(capsys) and _snapshot(out) == before
    assert train_det.main(_det(tmp_path, out, "--eval-only", "test.max_images=1")) == 0
    report = out / "checkpoints" / "last.eval.json"
    assert json.loads(report.read_text())["checkpoint"] == str(out / "checkpoints" / "last.pt")
    report.unlink()
    assert _snapshot(out) == before  # config.yaml, eval.json, metrics untouched
    assert train_det.main(_det(tmp_path, out, "--overwrite")) == 0


# -- tools never write over their inputs ----------------------------------------------------------------------
def test_refuse_inputs_and_unique_targets(tmp_path):
    a = tmp_path / "a.json"
    a.write_text("{}")
    (tmp_path / "link.json").symlink_to(a)
    with pytest.raises(OutputError, match="--out .* is the --gt input"):
        refuse_inputs({"--out": tmp_path / "link.json"}, {"--gt": a})
    with pytest.raises(OutputError, match="both"):
        refuse_inputs({"--out": a, "--results": tmp_path / "." / "a.json"}, {})
    refuse_inputs({"--out": tmp_path / "b.json"}, {"--gt": a, "--dt": None})
    with pytest.raises(OutputError, match="a.jpg and .*a.png would both be written"):
        unique_targets([tmp_path / "x" / "a.jpg", tmp_path / "x" / "a.png"], tmp_path / "out", suffix=".png")
    with pytest.raises(OutputError, match="would replace the input image"):
        unique_targets([tmp_path / "a.png"], tmp_path, suffix=".png")


def test_predict_refuses_before_anything_runs(tmp_path, capsys):
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "a.jpg"):
        cv2.imwrite(str(images / name), np.full((32, 32, 3), 128, np.uint8))
    before = _snapshot(images)
    common = ["--checkpoint", str(tmp_path / "missing.pt"), "--config", QUICKSTART]
    assert predict.main([*common, "--images", str(images / "a.png"), "--output", str(images)]) == 2
    assert "replace the input image" in _error(capsys)
    assert predict.main([*common, "--images", str(images), "--output", str(tmp_path / "out")]) == 2
    assert "would both be written" in _error(capsys)
    (tmp_path / "afile").write_text("x")
    assert predict.main([*common, "--images", str(images / "a.jpg"), "--output", str(tmp_path / "afile")]) == 2
    assert "is a file" in _error(capsys)
    assert _snapshot(images) == before and not (tmp_path / "out").exists()


def test_eval_coco_never_replaces_gt_or_detections(tmp_path, capsys):
    gt_src = REPO / "tests" / "fixtures" / "coco_sample" / "annotations.json"
    gt = tmp_path / "gt.json"
    gt.write_bytes(gt_src.read_bytes())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in json.loads(gt.read_text())["annotations"][:20]]
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(dets))
    other = tmp_path / "other_dets.json"
    other.write_text(json.dumps(dets))
    before = _snapshot(tmp_path)
    for out in (gt, dt, other):
        assert eval_coco.main(["--gt", str(gt), "--dt", str(dt), "--out", str(out)]) == 2
        assert str(out) in _error(capsys)
    ckpt = tmp_path / "ckpt.pt"  # checkpoint form: an existing detections file is refused before the model runs
    assert eval_coco.main(["--gt", str(gt), "--checkpoint", str(ckpt), "--results", str(other)]) == 2
    assert "exists" in _error(capsys) and _snapshot(tmp_path) == before
    assert eval_coco.main(["--gt", str(gt), "--dt", str(dt), "--out", str(tmp_path / "stats.json")]) == 0
    assert eval_coco.main(["--gt", str(gt), "--dt", str(dt), "--out", str(tmp_path / "stats.json")]) == 0  # ours
    assert eval_coco.main(["--gt", str(gt), "--dt", str(dt), "--out", str(other), "--overwrite"]) == 0
    assert gt.read_bytes() == before[Path("gt.json")] and dt.read_bytes() == before[Path("dt.json")]


def test_convert_weights_never_replaces_its_input(tmp_path, capsys):
    source = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), source)
    data = source.read_bytes()
    (tmp_path / "alias.pth").symlink_to(source)
    for target in (source, tmp_path / "alias.pth", tmp_path / "." / "r18.pth"):
        assert convert_weights.main(["--from", "torchvision", str(source), str(target)]) == 2
        assert "destroy the input" in _error(capsys)
    assert source.read_bytes() == data


def test_project_loop_resumes_a_run_stopped_before_its_first_checkpoint(tmp_path):
    """projects/_common.sh passes --resume for a non-empty run folder even without a checkpoint (the tools refuse
    such a folder otherwise), and nothing for a new one."""
    (tmp_path / "runs" / "started").mkdir(parents=True)
    (tmp_path / "runs" / "started" / "config.yaml").write_text("x")
    script = (f'source {REPO / "projects" / "_common.sh"}\n'
              'show() { echo "$1: ${RB_RESUME[*]:-none}"; mkdir -p "$2"; }\n'
              f'rb_train_each {tmp_path / "runs"} checkpoints/last.pt date show started new\n')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert "started: --resume" in done.stdout and "new: none" in done.stdout


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_is_exit_130_with_one_line(tmp_path, capsys, monkeypatch):
    gt = str(REPO / "tests" / "fixtures" / "coco_sample" / "annotations.json")
    monkeypatch.setattr(eval_coco, "evaluate_coco", _interrupt)
    assert eval_coco.main(["--gt", gt, "--dt", gt, "--out", str(tmp_path / "s.json")]) == 130
    assert "interrupted" in _error(capsys) and not (tmp_path / "s.json").exists()
    monkeypatch.setattr(predict, "list_images", _interrupt)
    assert predict.main(["--checkpoint", "x.pt", "--images", gt]) == 130
    assert "interrupted" in _error(capsys)
    monkeypatch.setattr(convert_weights, "convert", _interrupt)
    assert convert_weights.main(["--from", "torchvision", "a.pth", str(tmp_path / "b.safetensors")]) == 130
    assert "interrupted" in _error(capsys) and not (tmp_path / "b.safetensors").exists()
