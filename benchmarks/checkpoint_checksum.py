"""What the checkpoint checksum costs: save and load of a ResNet-50-FPN Mask R-CNN training checkpoint (model + SGD
momentum, as tools/train_det.py saves it), with and without the checksum, and the hashes that were candidates.

    python benchmarks/checkpoint_checksum.py                 # 7 interleaved repeats; writes nothing
    python benchmarks/checkpoint_checksum.py --repeats 9 --out benchmarks/results/checkpoint_checksum.md

The checksum is the CRC-32 of every zip record. The library saves with torch's own CRCs off and fills them in
itself (resbackbones/io/torch_zip.py: ISA-L crc32 over the file just written, records in parallel, while its data
goes to the disk), and loads with torch.load(mmap=True) for the structure and a parallel pread of every storage with
its CRC computed piece by piece as it is read (weights/integrity.load_torch_parallel_verified). So:
  save without = torch.save with its CRCs turned off (torch.serialization.set_crc32_options(False)), temp file,
                 fsync, rename: the checkpoint writer with no checksum at all;
  save torch   = the same with torch's own CRCs on: what the library wrote before this change;
  save with    = engine.checkpoint.save_atomic (CRCs filled in by the library);
  load without = torch.load(weights_only=True), what the reader did before the check existed;
  load par     = the library's parallel read with the check skipped (load_torch_parallel_verified(check=False)):
                 the same loader without the checksum, to isolate what the check itself costs;
  load with    = weights.io.torch_load_refusing_code (what every tool calls: parallel read, every CRC checked);
  check alone  = integrity.verify_zip_records on its own: every CRC computed where no core is spare;
  resume       = load, then what a resume does with the tensors: model.load_state_dict, optimizer.load_state_dict
                 and a write to every momentum buffer (the first step).
Each row is the median of the repeats, "without" and "with" interleaved so that background load hits both alike.
The candidates that would store a digest of the tensors in the checkpoint (hashlib.sha256, hashlib.blake2b,
zlib.crc32 of every tensor's bytes, in memory) are timed on the same tensors: their time adds to both save and load.
The table's first line is the machine (benchmarks/machine.py) and the CPU's lscpu "Model name".
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe  # noqa: E402  (benchmarks/ is this script's folder)


def lscpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def detector_checkpoint():
    """(checkpoint, model, optimizer): a train_det-like checkpoint of configs/mrcnn_r50.yaml (model, SGD with momentum
    buffers, loop position, RNG, config) and the model and optimizer a resume loads it into."""
    from resbackbones.config import load_config, to_dict
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.detection.builder import build_detector
    from resbackbones.engine.checkpoint import rng_state

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(DetTrainConfig, root / "configs" / "mrcnn_r50.yaml", ["model.backbone.weights="])
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.solver.base_lr, momentum=0.9, weight_decay=1e-4)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # fills every momentum buffer, as after the first iteration
    state = {"task": "det", "model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 1,
             "rng": [rng_state()], "config": to_dict(cfg)}
    return state, model, optimizer


def apply(obj, model, optimizer) -> None:
    """What a resume does with the file's tensors: into the model and the optimizer, then the first step writes every
    momentum buffer."""
    model.load_state_dict(obj["model"])
    optimizer.load_state_dict(obj["optimizer"])
    with torch.no_grad():
        for value in optimizer.state.values():
            value["momentum_buffer"].mul_(1.0)


def save_without(state, path: Path, torch_crcs: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.serialization.set_crc32_options(torch_crcs)
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        torch.serialization.set_crc32_options(True)


def evict_from_page_cache(path: Path) -> None:
    """Drop the (fsync'ed, so clean) file's pages from the page cache: the next read comes from the disk, as for a
    resume after a reboot or on another node; no root needed, unlike /proc/sys/vm/drop_caches."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def paired_overhead(times, without: str, with_: str) -> float:
    """Median over repeats of with / without - 1 from the same round, in %: robust to a machine whose speed
    changes between rounds (this shared VM's page-cache load switches between about 0.14 and 0.27 s)."""
    return 100 * statistics.median(b / a - 1 for a, b in zip(times[without], times[with_]))


def tensor_bytes(state):
    out = []

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            out.append(memoryview(obj.detach().reshape(-1).contiguous().view(torch.uint8).numpy()))
        elif isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)

    walk(state)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)

    import hashlib
    import zlib

    from isal.isal_zlib import crc32 as isal_crc32

    from resbackbones.engine.checkpoint import save_atomic
    from resbackbones.io.outputs import clear_registries
    from resbackbones.weights.integrity import load_torch_parallel_verified, verify_zip_records
    from resbackbones.weights.io import torch_load_refusing_code

    load_before = os.getloadavg()[0]
    state, model, optimizer = detector_checkpoint()
    buffers = tensor_bytes(state)
    megabytes = sum(b.nbytes for b in buffers) / 2 ** 20
    saves = {"without": lambda path: save_without(state, path), "torch": lambda path: save_without(state, path, True),
             "with": lambda path: save_atomic(state, path)}
    loads = {"without": lambda path: torch.load(path, weights_only=True),
             "par": lambda path: load_torch_parallel_verified(path, check=False),
             "with": lambda path: torch_load_refusing_code(path)}
    times = {f"{kind}_{variant}": [] for kind, variants in (("save", saves), ("load", loads), ("resume", loads),
                                                             ("cold", loads)) for variant in variants}
    times.update({k: [] for k in ("sha256", "blake2b", "crc32", "isal crc32", "check_alone")})
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        files = {variant: Path(folder) / f"{variant}.pt" for variant in saves}
        for repeat in range(args.repeats + 1):  # the first round warms the page cache and allocator: not counted
            rounds = {}
            clear_registries()  # each save / load stands for a separate command
            # The order turns every round: the write-back of one file slows the next, a busy moment hits all alike.
            order = list(saves)[repeat % 3:] + list(saves)[:repeat % 3]
            for variant in order:
                start = time.perf_counter()
                saves[variant](files[variant])
                rounds[f"save_{variant}"] = time.perf_counter() - start
            assert load_torch_parallel_verified(files["with"]) is not None, "the parallel way stepped aside"
            for variant in list(loads)[repeat % 3:] + list(loads)[:repeat % 3]:
                read = loads[variant]
                path = files["without"] if variant == "without" else files["with"]
                start = time.perf_counter()
                obj = read(path)
                rounds[f"load_{variant}"] = time.perf_counter() - start
                apply(obj, model, optimizer)
                del obj
                start = time.perf_counter()
                apply(read(path), model, optimizer)
                rounds[f"resume_{variant}"] = time.perf_counter() - start
                evict_from_page_cache(path)
                start = time.perf_counter()
                obj = read(path)
                rounds[f"cold_{variant}"] = time.perf_counter() - start
                del obj
            for name, digest in (("sha256", hashlib.sha256), ("blake2b", hashlib.blake2b)):
                start = time.perf_counter()
                hasher = digest()
                for b in buffers:
                    hasher.update(b)
                hasher.hexdigest()
                rounds[name] = time.perf_counter() - start
            start = time.perf_counter()
            verify_zip_records(files["with"])
            rounds["check_alone"] = time.perf_counter() - start
            for name, crc32 in (("crc32", zlib.crc32), ("isal crc32", isal_crc32)):
                start = time.perf_counter()
                crc = 0
                for b in buffers:
                    crc = crc32(b, crc)
                rounds[name] = time.perf_counter() - start
            if repeat:
                for key, value in rounds.items():
                    times[key].append(value)
        size = files["with"].stat().st_size / 2 ** 20
    med = {k: statistics.median(v) for k, v in times.items()}

    def pct(a: str, b: str) -> str:  # b against a: medians, and paired (the median of b / a - 1 within a round)
        return f"{100 * (med[b] / med[a] - 1):+.1f} % (paired {paired_overhead(times, a, b):+.1f} %)"

    both = 100 * ((med["save_with"] + med["load_with"]) / (med["save_without"] + med["load_par"]) - 1)
    before = 100 * ((med["save_with"] + med["load_with"]) / (med["save_torch"] + med["load_without"]) - 1)
    cpu = lscpu_model_name()
    lines = [
        "# Checkpoint checksum: cost on a ResNet-50-FPN Mask R-CNN training checkpoint",
        "",
        f"- machine: {describe()}",
        f"- lscpu Model name: {cpu}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1 min) before / after: "
        f"{load_before:.1f} / {os.getloadavg()[0]:.1f} (shared machine: the variants are interleaved)",
        f"- checkpoint: configs/mrcnn_r50.yaml model + SGD momentum + RNG + config, {megabytes:.0f} MB of tensors, "
        f"{size:.0f} MB file; median of {args.repeats} repeats; files in the page cache, save fsync'ed",
        f"- command: python benchmarks/checkpoint_checksum.py --repeats {args.repeats}",
        "",
        "| CPU | step | no checksum, s | with the checksum, s | the checksum adds |",
        "|---|---|---:|---:|---:|",
        f"| {cpu} | save (torch.save, CRCs off / library) | {med['save_without']:.3f} | {med['save_with']:.3f} | "
        f"{pct('save_without', 'save_with')} |",
        f"| {cpu} | load (library's parallel read, check skipped / checked) | {med['load_par']:.3f} | "
        f"{med['load_with']:.3f} | {pct('load_par', 'load_with')} |",
        f"| {cpu} | resume (load into model + optimizer, first write) | {med['resume_par']:.3f} | "
        f"{med['resume_with']:.3f} | {pct('resume_par', 'resume_with')} |",
        f"| {cpu} | load from the disk (pages dropped from the page cache) | {med['cold_par']:.3f} | "
        f"{med['cold_with']:.3f} | {pct('cold_par', 'cold_with')} |",
        f"| {cpu} | save + load | {med['save_without'] + med['load_par']:.3f} | "
        f"{med['save_with'] + med['load_with']:.3f} | {both:+.1f} % |",
        "",
        "Against the library before the checksum was checked (torch.save with torch's own CRCs, torch.load): "
        f"save {med['save_torch']:.3f} s -> {med['save_with']:.3f} s ({pct('save_torch', 'save_with')}), "
        f"load {med['load_without']:.3f} s -> {med['load_with']:.3f} s ({pct('load_without', 'load_with')}), "
        f"resume {med['resume_without']:.3f} s -> {med['resume_with']:.3f} s "
        f"({pct('resume_without', 'resume_with')}), from the disk {med['cold_without']:.3f} s -> "
        f"{med['cold_with']:.3f} s ({pct('cold_without', 'cold_with')}); save + load {before:+.1f} %.",
        "",
        f"The check alone, every CRC computed on one core with nothing else to do (verify_zip_records): "
        f"{med['check_alone']:.3f} s, {100 * med['check_alone'] / med['load_par']:.0f} % of the parallel load: what "
        "it would add where no second core is free. What makes the check nearly free: loading, torch.load "
        "reads every byte once with read() on one core, the library reads the same bytes with pread on every "
        "core torch may use and computes the CRC of each 256 KiB piece right after reading it, while it is in "
        "the CPU cache; saving, the CRCs are computed from the page cache while the file's data goes to the disk "
        "(the fsync's wait), with ISA-L in threads instead of torch's single-threaded CRC as it writes.",
        "",
        f"The digests that would have to be computed in memory instead, on the same {megabytes:.0f} MB (their time "
        f"adds to both save and load; parallel load = {med['load_par']:.3f} s):",
        "",
        "| digest of every tensor's bytes | s | % of the parallel load | % of save without |",
        "|---|---:|---:|---:|",
    ]
    for name in ("sha256", "blake2b", "crc32", "isal crc32"):
        label = {"sha256": "hashlib.sha256", "blake2b": "hashlib.blake2b", "crc32": "zlib.crc32",
                 "isal crc32": "isal crc32 (what the check computes)"}[name]
        lines.append(f"| {label} | {med[name]:.3f} | "
                     f"{100 * med[name] / med['load_par']:.0f} | {100 * med[name] / med['save_without']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
