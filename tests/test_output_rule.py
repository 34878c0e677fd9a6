"""The one output rule (issue 21): resbackbones/io/outputs.py writes atomically, turns every write failure into one
line naming the file, never writes onto a file the command reads or onto another run's files, and refuses an
existing file unless --overwrite. The tools' examples of the issue, each checked for: exit code, exactly one stderr
line, the sha256 of every input unchanged, no temp file left."""
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, random_detector_run, tiny_train_det_args
from resbackbones.engine.outputs import claim_run_dir
from resbackbones.io import outputs
from resbackbones.io.outputs import OutputError

import convert_weights  # tools/ is on pytest.ini's pythonpath
import eval_coco
import export_detector
import predict
import train_cls
import train_det

CLS = ["solver.max_iter=2", "solver.batch_size=4", "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
       "data.num_workers=0", "train.progress=false", "train.tensorboard=false", "--device", "cpu"]
GT = REPO / "tests" / "fixtures" / "coco_sample" / "annotations.json"
SMALL_DETECTOR = ["model.input.min_size=[96]", "model.input.max_size=128", "model.rpn.pre_nms_top_n_test=50",
                  "model.rpn.post_nms_top_n_test=20"]
NOT_UTF8 = os.fsdecode(b"out\xff")  # what Python makes of a folder name given as bytes that are not UTF-8


@pytest.fixture(autouse=True)
def _fresh_registries(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RESBACKBONES_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    outputs.clear_registries()
    yield
    outputs.clear_registries()


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _temps(folder: Path) -> list:
    return sorted(str(p) for p in Path(folder).rglob("*") if ".tmp-" in p.name)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def _error(capsys) -> str:
    return _one_line(capsys.readouterr().err)


def _limited(max_bytes: int):
    """preexec_fn: files of the child may not grow past max_bytes (EFBIG, as on a full disk); SIGXFSZ ignored so
    the write fails with the errno instead of killing the process."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def _run_limited(args, max_bytes: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
                          preexec_fn=_limited(max_bytes))


# -- the module ---------------------------------------------------------------------------------------------------
def test_a_failing_writer_leaves_the_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")

    def half_then_fail(name):
        Path(name).write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        outputs.write_atomic(target, half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_stream_atomic(target, lambda handle: (handle.write(b"half"), (_ for _ in ()).throw(
            KeyboardInterrupt())))
    assert target.read_text() == "old" and _temps(tmp_path) == []
    outputs.write_json_atomic(target, {"new": 1})
    assert json.loads(target.read_text()) == {"new": 1} and _temps(tmp_path) == []


def test_efbig_is_one_output_error_naming_the_file_and_nothing_is_left(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    code = ("import sys\nfrom resbackbones.io.outputs import OutputError, write_bytes_atomic, save_torch_atomic\n"
            "import torch\n"
            "for write in (lambda: write_bytes_atomic(sys.argv[1], b'x' * 100000),\n"
            "              lambda: save_torch_atomic(torch.zeros(100000), sys.argv[1])):\n"
            "    try:\n        write()\n    except OutputError as e:\n        print(e)\n")
    done = _run_limited(["-c", code, str(target)], 10000)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stderr
    assert all(f"cannot write {target}: file too large" in line for line in lines), lines
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_a_path_that_cannot_be_written_is_one_output_error(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "out.json" if where == "under_a_file" else Path("/proc/resbackbones_out.json")
    with pytest.raises(OutputError, match=f"cannot write {path}: .*nothing was written"):
        outputs.write_json_atomic(path, {})
    assert (tmp_path / "afile").read_text() == "x"


def test_an_input_is_never_written_whatever_overwrite_says(tmp_path):
    source = tmp_path / "gt.json"
    source.write_text("{}")
    (tmp_path / "alias.json").symlink_to(source)
    outputs.register_input(source)
    for target in (source, tmp_path / "alias.json", tmp_path / "." / "gt.json"):
        with pytest.raises(OutputError, match="reads it as an input"):
            outputs.write_text_atomic(target, "[]")
        with pytest.raises(OutputError, match="reads it as an input"):
            outputs.check_new_output(target, "--out", overwrite=True)
    assert source.read_text() == "{}"


def test_only_the_owning_trainer_writes_a_run_folder(tmp_path):
    run = tmp_path / "run"
    lock = claim_run_dir(run, resume=False, overwrite=False, run_files=())
    outputs.register_input(run / "checkpoints" / "last.pt")  # --resume reads it, the run rewrites it
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.pt", "tensorboard/events"):
        outputs.write_text_atomic(run / name, "mine")
    lock.release()
    outputs.clear_registries()  # the next command
    before = {name: _sha(run / name) for name in ("config.yaml", "metrics.csv", "checkpoints/last.pt")}
    for name in before:  # another command (the .lock stays: the folder is known as a run's)
        with pytest.raises(OutputError, match=f"belongs to the training run in {run}"):
            outputs.write_text_atomic(run / name, "theirs")
    outputs.write_text_atomic(run / "checkpoints" / "last.eval.json", "{}")  # a report beside a checkpoint
    outputs.write_text_atomic(run / "notes.txt", "a user's file in the folder")
    assert {name: _sha(run / name) for name in before} == before


def test_overwrite_never_deletes_a_file_the_command_reads(tmp_path):
    run = tmp_path / "run"
    claim_run_dir(run, resume=False, overwrite=False, run_files=()).release()
    outputs.write_text_atomic(tmp_path / "unrelated.txt", "x")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_text("weights")
    outputs.register_input(run / "checkpoints" / "best.pt")  # --weights RUN/checkpoints/best.pt
    with pytest.raises(OutputError, match="--overwrite would delete .*checkpoints, which this command reads"):
        claim_run_dir(run, resume=False, overwrite=True, run_files=("checkpoints",))
    assert (run / "checkpoints" / "best.pt").read_text() == "weights"


def test_check_new_output_messages(tmp_path):
    existing = tmp_path / "f.safetensors"
    existing.write_text("x")
    with pytest.raises(OutputError, match=f"^--export {existing} exists; give another path, or --overwrite"):
        outputs.check_new_output(existing, "--export", overwrite=False)
    outputs.check_new_output(existing, "--export", overwrite=True)
    with pytest.raises(OutputError, match="is a folder"):
        outputs.check_new_output(tmp_path, "--export", overwrite=True)
    with pytest.raises(OutputError, match=r"out\\xff.*not valid UTF-8"):
        outputs.check_new_output(tmp_path / NOT_UTF8 / "a.png", "--output", overwrite=True)
    with pytest.raises(OutputError, match=r"out\\xff.*not valid UTF-8"):
        outputs.write_text_atomic(tmp_path / NOT_UTF8, "x")
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_write_image_checks_what_cv2_imwrite_ignored(tmp_path):
    image = np.full((8, 8, 3), 200, np.uint8)
    assert np.array_equal(cv2.imread(str(outputs.write_image(tmp_path / "a.png", image))), image)
    with pytest.raises(OutputError, match=r"cannot write .*a\.xyz: OpenCV"):
        outputs.write_image(tmp_path / "a.xyz", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# -- the tools: the examples ------------------------------------------------------------------------------
def test_train_cls_export_never_replaces_a_file_without_overwrite(tmp_path, capsys):
    export = tmp_path / "bb.safetensors"
    export.write_text("a user's file")
    before = _sha(export)
    assert train_cls.main([*CLS, "--output", str(tmp_path / "run"), "--export", str(export)]) == 2
    assert f"--export {export} exists; give another path, or --overwrite" in _error(capsys)
    assert _sha(export) == before and not (tmp_path / "run").exists()  # refused before any work


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cls") / "run"
    outputs.clear_registries()
    assert train_cls.main([*CLS, "--output", str(run)]) == 0
    if not (run / "checkpoints" / "best.pt").exists():
        (run / "checkpoints" / "best.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    return run


def test_train_cls_export_onto_the_runs_own_checkpoint_is_refused(cls_run, capsys):
    best, last = cls_run / "checkpoints" / "best.pt", cls_run / "checkpoints" / "last.pt"
    before = {p: _sha(p) for p in (best, last)}
    for extra in ([], ["--overwrite"]):
        assert train_cls.main(["--weights", str(best), "--export", str(last), *extra]) == 2
        assert f"refused to write {last}: it belongs to the training run in {cls_run}" in _error(capsys)
    assert {p: _sha(p) for p in before} == before and _temps(cls_run) == []


def test_convert_weights_refuses_an_existing_output_unless_overwrite(tmp_path, capsys):
    import torchvision

    source, out = tmp_path / "r18.pth", tmp_path / "r18.safetensors"
    torch.save(torchvision.models.resnet18().state_dict(), source)
    out.write_text("a user's file")
    before = {p: _sha(p) for p in (source, out)}
    assert convert_weights.main(["--from", "torchvision", str(source), str(out)]) == 2
    assert f"output {out} exists; give another path, or --overwrite" in _error(capsys)
    assert {p: _sha(p) for p in before} == before
    assert convert_weights.main(["--from", "torchvision", str(source), str(out), "--overwrite"]) == 0
    assert _sha(source) == before[source] and _sha(out) != before[out] and _temps(tmp_path) == []


@pytest.fixture
def detector(tmp_path):
    """A random small detector run (config.yaml + last.pt, no .lock), a folder holding copies of the sample COCO
    images and the sample json relabelled into the run's categories a, b, c: inputs that must survive every command."""
    import shutil

    run = random_detector_run(tmp_path / "det", SMALL_DETECTOR)
    images = Path(shutil.copytree(GT.parent / "images", tmp_path / "images"))
    gt = json.loads(GT.read_text())
    gt["categories"] = [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    for ann in gt["annotations"]:
        ann["category_id"] = ann["category_id"] % 3 + 1
    (run / "gt.json").write_text(json.dumps(gt))
    return run, images


def _inputs_sha(*folders) -> dict:
    return {p: _sha(p) for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_eval_coco_implicit_detections_json_is_printed_and_never_replaces_a_users_file(detector, tmp_path, capsys):
    run, images = detector
    implicit = tmp_path / "s.detections.json"
    implicit.write_text("[] a user's detections")
    user_file = _sha(implicit)
    common = ["--checkpoint", str(run / "last.pt"), "--gt", str(run / "gt.json"), "--images", str(images),
              "--device", "cpu", "--amp", "none"]
    before = _inputs_sha(run, images)
    assert eval_coco.main([*common, "--out", str(tmp_path / "s.json")]) == 2
    assert f"{implicit} exists; give another path, or --overwrite" in _error(capsys)
    assert _sha(implicit) == user_file and not (tmp_path / "s.json").exists()
    # --overwrite replaces that file, never an input: the config.yaml the checkpoint is read with, an image
    for out in (run / "config.yaml", run / "last.pt", next(images.iterdir())):
        assert eval_coco.main([*common, "--out", str(out), "--overwrite"]) == 2
        assert "input" in _error(capsys)
    assert eval_coco.main([*common, "--out", str(tmp_path / "s.json"), "--overwrite"]) == 0
    assert f"wrote the detections to {implicit}" in capsys.readouterr().out
    assert isinstance(json.loads(implicit.read_text()), list)
    assert _inputs_sha(run, images) == before and _temps(tmp_path) == []


def test_export_detector_with_overwrite_never_replaces_what_it_reads(detector, tmp_path, capsys):
    run, images = detector
    image = next(images.iterdir())
    before = _inputs_sha(run, images)
    for out, check in ((run / "config.yaml", []), (run / "last.pt", []), (image, ["--check", str(image)])):
        assert export_detector.main(["--checkpoint", str(run / "last.pt"), "--output", str(out), "--overwrite",
                                     *check]) == 2
        assert "input" in _error(capsys)
    assert _inputs_sha(run, images) == before and _temps(tmp_path) == []


def test_predict_on_a_full_disk(detector, tmp_path):
    run, images = detector
    before = _inputs_sha(run, images)
    out = tmp_path / "pred"
    done = _run_limited(["tools/predict.py", "--checkpoint", str(run / "last.pt"), "--images", str(images),
                         "--output", str(out), "--device", "cpu", "--amp", "none"], 2000)
    line = _one_line(done.stderr)
    assert done.returncode == 2 and "file too large" in line and f"{out}/" in line, done.stderr
    assert " -> " not in done.stdout and not list(out.glob("*.png"))  # nothing claimed, nothing half-written
    assert _temps(tmp_path) == [] and _inputs_sha(run, images) == before


def test_export_detector_on_a_full_disk(detector, tmp_path):
    run, images = detector
    before = _inputs_sha(run, images)
    exported = tmp_path / "det.pt"
    done = _run_limited(["tools/export_detector.py", "--checkpoint", str(run / "last.pt"), "--output",
                         str(exported)], 100000)
    line = _one_line(done.stderr)
    assert done.returncode == 2 and f"cannot write {exported}: file too large" in line, done.stderr
    assert not exported.exists() and _temps(tmp_path) == [] and _inputs_sha(run, images) == before


def test_predict_refuses_an_existing_png_unless_overwrite(detector, tmp_path, capsys):
    run, images = detector
    first = sorted(images.iterdir())[0]
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / f"{first.stem}.png").write_text("a user's file")
    assert predict.main(["--checkpoint", str(run / "last.pt"), "--images", str(first), "--output",
                         str(tmp_path / "pred"), "--device", "cpu"]) == 2
    assert "exists; give another path, or --overwrite" in _error(capsys)
    assert (tmp_path / "pred" / f"{first.stem}.png").read_text() == "a user's file"


def test_a_non_utf8_output_folder_is_one_line_naming_it(detector, tmp_path, capsys):
    run, images = detector
    bad = tmp_path / NOT_UTF8  # argv b".../out\xff" arrives so: segfaulted inside cv2.imwrite
    assert predict.main(["--checkpoint", str(run / "last.pt"), "--images", str(images), "--output", str(bad)]) == 2
    line = _error(capsys)
    assert "--output" in line and "out\\xff" in line and "not valid UTF-8" in line
    assert train_det.main(tiny_train_det_args(tmp_path / "shapes", bad)) == 2
    line = _error(capsys)
    assert "--output" in line and "out\\xff" in line and "not valid UTF-8" in line and "override" not in line
    assert not bad.exists() and not (tmp_path / "shapes").exists()


def test_train_det_checkpoint_write_on_a_full_disk(tmp_path):
    out = tmp_path / "run"
    done = _run_limited(["tools/train_det.py", *tiny_train_det_args(tmp_path / "shapes", out, "solver.max_iter=1",
                                                                     "data.train.num_images=2", "data.val.num_images=1",
                                                                     "train.tensorboard=false")], 200000)
    line = _one_line(done.stderr)
    assert done.returncode in (2, 3) and "file too large" in line and str(out) in line, done.stderr
    assert _temps(out) == []


def test_train_det_eval_json_that_cannot_be_written_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "eval.json").mkdir(parents=True)  # a folder where the final eval.json goes: its rename fails
    (out / "eval.json" / "keep").write_text("a user's file")
    args = tiny_train_det_args(tmp_path / "shapes", out, "--resume", "solver.max_iter=1", "data.train.num_images=2",
                               "data.val.num_images=1", "train.tensorboard=false")
    assert train_det.main(args) == 2
    line = _error(capsys)
    assert f"cannot write {out / 'eval.json'}" in line and "folder" in line, line
    assert (out / "eval.json" / "keep").read_text() == "a user's file" and _temps(out) == []
