"""benchmarks/bf16_accuracy/subset_noise.py: re-scores saved detections on the same random image subsets for every
run, pairs bf16 with fp32 of the same seed and fp32 seeds with each other, and summarises the differences. Checked
on the COCO sample with detections whose AP is known: the ground truth itself (AP 1 on any subset) and none (AP 0)."""
import csv
import importlib.util
import json

from conftest import FIXTURES, REPO

spec = importlib.util.spec_from_file_location("subset_noise", REPO / "benchmarks" / "bf16_accuracy" / "subset_noise.py")
subset_noise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(subset_noise)

GT = FIXTURES / "coco_sample" / "annotations.json"


def _run(group, name, detections):
    folder = group / name
    (folder / "inference").mkdir(parents=True)
    (folder / "eval.json").write_text("{}")
    (folder / "inference" / "coco_instances_results.json").write_text(json.dumps(detections))
    (folder / "config.yaml").write_text(f"data:\n  val: {{ann_file: {GT}, with_masks: false}}\n"
                                        "test:\n  max_dets: [1, 10, 100]\n")


def test_subsets_pair_by_seed_and_score_known_detections(tmp_path):
    gt = json.loads(GT.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"] if not a.get("iscrowd")]
    group = tmp_path / "runs" / "toy_it300"
    _run(group, "fp32_s0", perfect)
    _run(group, "bf16emu_s0", perfect)
    _run(group, "fp32_s1", [])
    (group / "bf16emu_s1").mkdir()  # unfinished: no eval.json, left out
    _run(group, "fp32_s2", perfect)
    (group / "fp32_s2" / "eval.json").write_text('{"stopped_early": true}')  # a stopped run: left out too
    _run(group, "fp32ctl_s0", [])  # a control precision: not an arm of either comparison
    out = tmp_path / "noise.csv"
    assert subset_noise.main(["--runs", str(tmp_path / "runs"), "--groups", "toy_it300", "--images", "3",
                              "--draws", "4", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [tuple(r[c] for c in ("comparison", "seed_a", "seed_b")) for r in rows[:2]] == [
        ("bf16-fp32", "0", "0"), ("fp32-fp32", "1", "0")]
    assert len(rows) == 4 * 2 and {r["metric"] for r in rows} == {"bbox"}
    assert all((r["AP_a"], r["AP_b"]) == (("1.0000", "1.0000") if r["comparison"] == "bf16-fp32"
                                          else ("0.0000", "1.0000")) for r in rows)
    table = subset_noise.summary_table(rows).splitlines()
    assert table[2] == "| toy_it300 | bbox | bf16-fp32 | 4 | +0.0000 | 0.0000 | +0.0000 to +0.0000 | 0% | 0% |"
    assert table[3] == "| toy_it300 | bbox | fp32-fp32 | 4 | -1.0000 | 0.0000 | -1.0000 to -1.0000 | 100% | 100% |"


def test_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys):
    group = tmp_path / "runs" / "toy_it300"
    _run(group, "fp32_s0", [])
    for argv, message in ((["--groups", "missing"], "missing: no such run group"),
                          (["--groups", "toy_it300", "--images", "7"],
                           "--images 7: the val set of toy_it300 has only 6"),
                          (["--groups", "toy_it300", "--draws", "1"], "--draws >= 2")):
        try:
            subset_noise.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "x.csv"), *argv])
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"{argv} did not exit")
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], err
    assert not (tmp_path / "x.csv").exists()  # nothing written on a refusal
