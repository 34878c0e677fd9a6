"""Property tests of the tool contract (issue 21, item 5): generated bad inputs, each held to fuzz_support's rule.

Four generators, each seeded and bounded (the session prints the case counts and the seed):
- COCO jsons for tools/eval_coco.py: a valid ground truth / detections pair with one field removed, retyped or set
  to a hostile value (huge ids, NaN / inf / negative boxes, bad RLE), or the file made non-UTF-8 / truncated.
- weights files for rb.build_backbone(weights=...): a valid safetensors file with a tensor's dtype changed, a byte
  range zeroed, the file truncated, or a metadata value retyped. Success must give the original tensors.
- config overrides for tools/train_det.py's schema: known, misspelt and renamed keys with values of every type.
- output paths for eval_coco --out: existing files, the inputs themselves, paths under a file, non-UTF-8 names.
"""
import contextlib
import json
import math
import os
import resource
from pathlib import Path

import pytest
import torch
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from conftest import REPO
from fuzz_support import (CASES, FUZZ_EXAMPLES, FUZZ_SEED, FUZZ_SETTINGS, assert_contract, call_tool, no_temp_files,
                          sha256_of)

eval_coco = pytest.importorskip("eval_coco")

HOSTILE = st.one_of(
    st.none(), st.booleans(), st.sampled_from([-1, 0, 2**31, 2**63, 2**64, -2**63 - 1]),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.5, 1e308]), st.text(max_size=4),
    st.lists(st.integers(-3, 3), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _valid_gt():
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2)]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    annotations = [{"id": k + 1, "image_id": 1 + k % 2, "category_id": 1 + k % 2, "bbox": [4.0 + k, 5.0, 20.0, 10.0],
                    "area": 200.0, "iscrowd": 0,
                    "segmentation": [[4.0 + k, 5.0, 24.0 + k, 5.0, 24.0 + k, 15.0, 4.0 + k, 15.0]]}
                   for k in range(4)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _valid_dt():
    return [{"image_id": 1 + k % 2, "category_id": 1 + k % 2, "bbox": [5.0 + k, 5.0, 19.0, 10.0], "score": 0.9 - k / 10}
            for k in range(4)]


@st.composite
def coco_case(draw):
    """(gt json text or bytes, dt json text or bytes, a description) with one mutation."""
    gt, dt = _valid_gt(), _valid_dt()
    target = draw(st.sampled_from(["images", "annotations", "categories", "dt", "gt_top", "dt_top", "bytes"]))
    if target in ("images", "annotations", "categories", "dt"):
        records = dt if target == "dt" else gt[target]
        record = records[draw(st.integers(0, len(records) - 1))]
        key = draw(st.sampled_from(sorted(record) + ["segmentation", "counts"]))
        if draw(st.booleans()) and key in record:
            del record[key]
            what = f"{target}.{key} removed"
        else:
            record[key] = draw(HOSTILE)
            what = f"{target}.{key}={record[key]!r}"
    elif target == "gt_top":
        key = draw(st.sampled_from(["images", "annotations", "categories"]))
        gt[key] = draw(HOSTILE)
        what = f"gt {key}={gt[key]!r}"
    elif target == "dt_top":
        dt = draw(HOSTILE)
        what = f"dt={dt!r}"
    else:
        which = draw(st.sampled_from(["gt", "dt"]))
        text = json.dumps(gt if which == "gt" else dt).encode()
        cut = draw(st.integers(0, len(text)))
        mutated = draw(st.sampled_from([text[:cut], text[:cut] + b"\xff\xfe" + text[cut:], b"", b"\x00" * 16]))
        what = f"{which} bytes mutated"
        return (mutated, json.dumps(dt), what) if which == "gt" else (json.dumps(gt), mutated, what)
    return json.dumps(gt), json.dumps(dt), what


@seed(FUZZ_SEED)
@FUZZ_SETTINGS
@given(case=coco_case())
def test_fuzz_eval_coco_inputs(case, tmp_path_factory):
    gt_text, dt_text, what = case
    folder = tmp_path_factory.mktemp("coco")
    gt, dt, out = folder / "gt.json", folder / "dt.json", folder / "stats.json"
    for path, content in ((gt, gt_text), (dt, dt_text)):
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sha256_of([gt, dt])
    code, _, err = call_tool(eval_coco.main, ["--gt", str(gt), "--dt", str(dt), "--out", str(out),
                                              "--iou-type", "bbox", "segm"])
    CASES["eval_coco inputs"] += 1
    assert_contract(code, err, names=["gt.json", "dt.json"], outputs=[out], inputs_before=before, context=what)
    assert not no_temp_files(folder), what


@seed(FUZZ_SEED)
@FUZZ_SETTINGS
@given(case=coco_case())
def test_fuzz_training_dataset(case, tmp_path_factory):
    """The training side of the same jsons (data.CocoDetection, what train_det reads): every image loads with
    finite boxes inside the image, or one user-error line names the file; never a KeyError / IndexError."""
    import cv2
    import numpy as np

    from resbackbones.data.coco import CocoDetection

    gt_text, _, what = case
    folder = tmp_path_factory.mktemp("train")
    gt = folder / "gt.json"
    gt.write_bytes(gt_text if isinstance(gt_text, bytes) else gt_text.encode())
    for name in ("1.jpg", "2.jpg"):
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), 127, np.uint8))  # test data, not a library write
    CASES["training dataset"] += 1
    try:
        dataset = CocoDetection(gt, folder, with_masks=True)
        samples = [dataset[i] for i in range(len(dataset))]
    except ValueError as error:  # DataError and the COCO checks: the tools print one line, exit 2
        message = str(error)
        assert "\n" not in message.strip() and "gt.json" in message, (what, message)
        return
    for image, target in samples:
        boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
        assert np.isfinite(boxes).all(), (what, boxes)
        assert (boxes[:, 2:] >= boxes[:, :2]).all(), (what, boxes)


# -- weights files ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    import resbackbones as rb

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = rb.build_backbone("cifar_resnet20")
    path = folder / "ref.safetensors"
    rb.weights.save(model, path, metadata=rb.weights.WeightsMetadata(arch="cifar_resnet20", source="cifar",
                                                                     stride_in_1x1=None).to_dict())
    return path, {k: v.clone() for k, v in model.state_dict().items()}


@st.composite
def weights_mutation(draw):
    kind = draw(st.sampled_from(["dtype", "zero", "truncate", "metadata", "text"]))
    if kind == "dtype":
        return kind, draw(st.sampled_from([torch.int8, torch.bool, torch.int32, torch.uint8])), draw(st.integers(0, 10))
    if kind == "zero":
        return kind, draw(st.floats(0.0, 0.999)), draw(st.sampled_from([1, 64, 4096, 65536]))
    if kind == "truncate":
        return kind, draw(st.floats(0.0, 0.999)), None
    if kind == "metadata":
        key = draw(st.sampled_from(["rb.stride_in_1x1", "rb.pixel_mean", "rb.pixel_std", "rb.pixel_scale",
                                    "rb.input_format", "rb.arch"]))
        value = draw(st.sampled_from(['"false"', '"true"', "1", "null", "[NaN, 0.5, 0.5]", "[0.0, 0.0, 0.0]",
                                      "[1, 2]", '"abc"', "{", "Infinity", "-1"]))
        return kind, key, value
    return kind, draw(st.sampled_from([b"", b"hello weights\n", b"\x00" * 64, b"PK\x03\x04junk"])), None


def _mutate_weights(reference: Path, target: Path, mutation) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    kind, a, b = mutation
    data = reference.read_bytes()
    if kind in ("dtype", "metadata"):
        with safe_open(str(reference), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            meta = dict(handle.metadata() or {})
        if kind == "dtype":
            names = sorted(k for k, v in tensors.items() if v.is_floating_point())
            name = names[b % len(names)]
            tensors[name] = tensors[name].to(a)
        else:
            meta[a] = b
        save_file(tensors, str(target), metadata=meta)
    elif kind == "zero":
        header = 8 + int.from_bytes(data[:8], "little")
        start = header + int(a * (len(data) - header))
        length = min(b, len(data) - start)
        target.write_bytes(data[:start] + b"\x00" * length + data[start + length:])
    elif kind == "truncate":
        target.write_bytes(data[:int(a * len(data))])
    else:
        target.write_bytes(a)


@seed(FUZZ_SEED)
@FUZZ_SETTINGS
@given(mutation=weights_mutation())
def test_fuzz_weights_files(mutation, reference_weights, tmp_path_factory):
    """Every mutated weights file is refused with one line naming it, or loads to exactly the reference tensors
    (a zeroed range that held zeros already changes nothing); never an exception other than a user error."""
    import resbackbones as rb

    reference, state = reference_weights
    target = tmp_path_factory.mktemp("w") / "mutated.safetensors"
    _mutate_weights(reference, target, mutation)
    CASES["weights files"] += 1
    try:
        model = rb.build_backbone("cifar_resnet20", weights=str(target))
    except ValueError as error:  # WeightsError / CheckpointError: the tools print it as one line, exit 2
        message = str(error)
        assert "\n" not in message.strip() and "mutated.safetensors" in message, (mutation, message)
        return
    loaded = model.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(loaded[k].to(v.dtype), v) or loaded[k].dtype != v.dtype]
    assert not changed, f"{mutation}: loaded without a word but {len(changed)} tensors differ ({changed[:3]})"


# -- config overrides -----------------------------------------------------------------------------------------------
def _config_defaults(section=None):
    """{dotted key: default value} of every leaf of DetTrainConfig (or of one of its sections)."""
    from resbackbones.config import to_dict
    from resbackbones.config.det import DetTrainConfig

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                yield from walk(f"{prefix}{key}.", sub)
        else:
            yield prefix[:-1], value

    tree = to_dict(DetTrainConfig())
    return dict(walk("", tree[section] if section else tree))


def _leaf_keys():
    return sorted(_config_defaults())


@st.composite
def override(draw):
    keys = _leaf_keys()
    key = draw(st.sampled_from(keys))
    style = draw(st.sampled_from(["as is", "typo", "section", "renamed"]))
    if style == "typo":
        key = key[:-1] + draw(st.sampled_from(["s", "_", "X"]))
    elif style == "section":
        key = key.rsplit(".", 1)[0]
    elif style == "renamed":
        key = draw(st.sampled_from(["solver.lr", "solver.max_iters", "train.threads", "solver.ims_per_batch"]))
    value = draw(st.sampled_from(["1", "0", "-1", "1e9", "nan", "inf", "true", "null", "[]", "[1, 2]", "{a: 1}",
                                  "abc", "''", "1.5", "[", "resnet50", "2**63", "9223372036854775808"]))
    return key, value


@seed(FUZZ_SEED)
@FUZZ_SETTINGS
@given(case=override())
def test_fuzz_config_overrides(case):
    """load_config with any key=value: a config, or one ConfigError line naming the key; never another error."""
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig

    key, value = case
    CASES["config overrides"] += 1
    try:
        cfg = load_config(DetTrainConfig, REPO / "configs" / "quickstart.yaml", [f"{key}={value}"])
    except ValueError as error:
        message = str(error)
        assert "\n" not in message.strip(), (case, message)
        assert key.split(".")[-1] in message or key in message, (case, message)
        return
    assert cfg is not None


@st.composite
def model_override(draw):
    """A model.* key with a value of its own type most of the time (so that it loads and reaches the builder)."""
    defaults = _config_defaults("model")
    key = draw(st.sampled_from(sorted(defaults)))
    default = defaults[key]
    if isinstance(default, bool):
        choices = ["true", "false"]
    elif isinstance(default, int):
        choices = ["0", "1", "2", "3", "7", "64"]
    elif isinstance(default, float):
        choices = ["0.0", "0.01", "0.5", "1.0"]
    elif isinstance(default, list):
        choices = ["[]", "[1]", "[res4]", "[res5, res2]", "[[16], [32]]", "[0.5]", "[res2, res3, res4, res5]"]
    else:
        choices = ["''", "GN", "BN", "FrozenBN", "none", "c4", "single", "RoIPool", "conv_fc", "res5", "p6p7", "x"]
    return f"model.{key}", draw(st.sampled_from(choices))


@seed(FUZZ_SEED)
@settings(FUZZ_SETTINGS, max_examples=max(10, FUZZ_EXAMPLES // 4))  # a build + forward costs ~1 s
@given(case=model_override())
def test_fuzz_model_overrides_build(case):
    """A model config that loads also builds and detects on an image, or raises one ValueError line naming what is
    wrong: a value the schema lets through never surfaces as an AssertionError / IndexError deep in torchvision."""
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.detection.builder import build_detector

    key, value = case
    try:
        cfg = load_config(DetTrainConfig, REPO / "configs" / "quickstart.yaml",
                          [f"{key}={value}", "model.backbone.weights="])
    except ValueError:
        return  # the load-time contract is test_fuzz_config_overrides'
    CASES["model overrides built"] += 1
    try:
        model = build_detector(cfg.model).eval()
        with torch.no_grad():  # a small image: the forward checks shapes the builder cannot (anchors vs levels)
            detections = model([torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))])
    except ValueError as error:
        assert "\n" not in str(error).strip(), (case, str(error))
        return
    assert set(detections[0]) >= {"boxes", "labels", "scores"}, case


# -- output paths ---------------------------------------------------------------------------------------------------
@st.composite
def output_case(draw):
    return draw(st.sampled_from(["gt", "dt", "existing text", "existing stats", "under a file", "folder",
                                 "non-utf8", "new", "symlink to gt", "full disk", "read-only file system",
                                 "no such device"])), draw(st.booleans())


@contextlib.contextmanager
def file_size_limit(limit):
    """RLIMIT_FSIZE for the block (None: unchanged): a write past `limit` bytes fails with EFBIG, as on a full disk
    (Python ignores SIGXFSZ, so the process lives and sees the error)."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@seed(FUZZ_SEED)
@FUZZ_SETTINGS
@given(case=output_case())
def test_fuzz_eval_coco_output_paths(case, tmp_path_factory):
    """--out anywhere: written (exit 0, the file is a stats json), or refused with one line; the inputs and any
    existing non-stats file keep their bytes unless --overwrite was given for that file."""
    kind, overwrite = case
    folder = tmp_path_factory.mktemp("out")
    gt, dt = folder / "gt.json", folder / "dt.json"
    gt.write_text(json.dumps(_valid_gt()))
    dt.write_text(json.dumps(_valid_dt()))
    other = folder / "notes.txt"
    other.write_text("a user's file\n")
    out = {"gt": gt, "dt": dt, "existing text": other, "existing stats": folder / "s.json",
           "under a file": other / "stats.json", "folder": folder, "new": folder / "new" / "stats.json",
           "non-utf8": Path(os.fsdecode(bytes(folder) + b"/caf\xe9.json")), "symlink to gt": folder / "link.json",
           "full disk": folder / "full.json", "read-only file system": Path("/proc/rb_stats.json"),
           "no such device": Path("/dev/null/stats.json")}[kind]
    if kind == "existing stats":
        out.write_text(json.dumps({"bbox": {"AP": 0.5}}))
    if kind == "symlink to gt":
        out.symlink_to(gt)
    protected = [gt, dt] + ([] if overwrite and kind == "existing text" else [other])
    before = sha256_of(protected)
    with file_size_limit(64 if kind == "full disk" else None):  # the stats json is larger
        code, _, err = call_tool(eval_coco.main, ["--gt", str(gt), "--dt", str(dt), "--out", str(out)]
                                 + (["--overwrite"] if overwrite else []))
    CASES["eval_coco output paths"] += 1
    shown = os.fsencode(out).decode("utf-8", "backslashreplace")
    assert_contract(code, err, names=[out.name, shown, "--out"], outputs=[out], inputs_before=before,
                    context=f"{kind} overwrite={overwrite}")
    if code == 0:
        assert "bbox" in json.loads(Path(out).read_text())
    if kind == "full disk":
        assert code == 2 and not out.exists(), (code, err)  # nothing half-written
    assert not no_temp_files(folder), kind
