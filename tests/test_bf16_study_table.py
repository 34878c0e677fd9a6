"""benchmarks/bf16_accuracy.py --table: the README's bf16 table comes from summary.csv through means_table, so its
means, seed ranges, differences, the 0.005 verdict and the same-seed interval must be right, box-only sets must
print no mask row, and the atomic collect must keep the summary's exact columns."""
import importlib.util
import json

from conftest import REPO

spec = importlib.util.spec_from_file_location("bf16_accuracy", REPO / "benchmarks" / "bf16_accuracy.py")
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)

SUMMARY = """dataset,recipe,precision,seed,bbox_AP,segm_AP
bccd,scratch_gn,fp32,0,0.4000,
bccd,scratch_gn,bf16emu,0,0.4080,
bccd,scratch_gn,fp32,1,0.4200,
bccd,scratch_gn,bf16emu,1,0.4200,
dsb2018,pretrained_frozenbn,fp32,0,0.3000,0.3100
dsb2018,pretrained_frozenbn,bf16emu,0,0.3040,0.3000
dsb2018,pretrained_frozenbn,fp32ctl,0,0.9000,0.9000
"""


def test_means_table_gives_means_ranges_differences_and_the_verdict(tmp_path):
    (tmp_path / "summary.csv").write_text(SUMMARY)
    lines = harness.means_table(tmp_path / "summary.csv").splitlines()
    assert len(lines) == 2 + 3  # header, separator; bccd bbox; dsb bbox and segm (no bccd segm row, fp32ctl ignored)
    # same-seed differences 0.008 and 0.000: sd 0.005657, t(0.975, 1) = 12.706 -> +-0.0508; a +-0.005 interval
    # needs 8 seeds (t(0.975, 7) * sd / sqrt(8) = 0.00473; with 7: 0.00523)
    assert lines[2] == ("| bccd | scratch_gn | 2 / 2 | bbox | 0.4100 (0.4000-0.4200) | 0.4140 (0.4080-0.4200) "
                        "| +0.0040 | yes | +0.0040 +- 0.0508 | 8 |")
    # one seed: no interval
    assert lines[3].endswith("| bbox | 0.3000 (0.3000-0.3000) | 0.3040 (0.3040-0.3040) | +0.0040 | yes | - | - |")
    assert lines[4].endswith("| segm | 0.3100 (0.3100-0.3100) | 0.3000 (0.3000-0.3000) | -0.0100 | no | - | - |")


def test_paired_difference_pairs_by_seed_and_ignores_unpaired_seeds():
    mean, half, needed = harness.paired_difference({0: 0.40, 1: 0.42, 2: 0.50}, {0: 0.408, 1: 0.42, 5: 0.1})
    assert abs(mean - 0.004) < 1e-12 and abs(half - 0.05082) < 1e-4 and needed == 8
    assert harness.paired_difference({0: 0.4}, {0: 0.41}) is None


def test_collect_writes_the_exact_summary_columns_from_finished_cells(tmp_path):
    cell = tmp_path / "runs" / "dsb2018_pretrained_frozenbn_it300" / "fp32_s2"
    cell.mkdir(parents=True)
    (cell / "eval.json").write_text(json.dumps({"bbox": {"AP": 0.25, "AP50": 0.5}, "segm": {"AP": 0.125},
                                                "iteration": 300, "train_seconds": 9.0, "amp": "none"}))
    unfinished = tmp_path / "runs" / "dsb2018_pretrained_frozenbn_it300" / "bf16emu_s2"
    unfinished.mkdir()
    (unfinished / "eval.json").write_text(json.dumps({"bbox": {"AP": 0.1}, "stopped_early": True}))
    assert harness.collect(tmp_path / "runs", tmp_path / "results") == 1
    assert (tmp_path / "results" / "summary.csv").read_text() == (
        "dataset,recipe,precision,seed,bbox_AP,segm_AP\ndsb2018,pretrained_frozenbn,fp32,2,0.2500,0.1250\n")
    assert not list((tmp_path / "results").glob("*.tmp*"))  # the atomic writes left no temporary file
