"""Helpers of tests/test_docs_commands.py: find the shell commands and python blocks of the docs, and the throwaway
checkout the test runs them in.

A command is a line of a fenced bash/sh block, or a line starting with a command word (python, python3, torchrun,
pip, bash, scripts/) in a fenced block without language or in a 4-space indented block; a trailing `\\` joins the
next line, a trailing `  # comment` is dropped and white space is folded. Inline `code` is not a command.
"""
import importlib.util
import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESBACKBONES_SHARED", REPO.parent / "shared"))
# every page of the docs site (docs/ but its run records in docs/results/ and the plans in docs/dev/, as mkdocs.yml)
DOC_FILES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")
                                  if p.relative_to(REPO / "docs").parts[0] not in ("results", "dev")),
             "configs/detectron2/README.md"]
COMMAND_WORDS = ("python ", "python3 ", "torchrun ", "pip ", "bash ", "scripts/", ".venv/bin/python ")
_COMMENT = re.compile(r"\s+#\s.*$")


def _normalise(line: str) -> str:
    return " ".join(_COMMENT.sub("", line).split())


def extract(text: str) -> Tuple[List[str], List[str]]:
    """(commands, python blocks) of one markdown text, in order."""
    commands: List[str] = []
    python: List[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            lang, body = fence.group(1), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if lang == "python":
                python.append("\n".join(body) + "\n")
            elif lang in ("bash", "sh", ""):
                commands += _commands(body, every_line=lang in ("bash", "sh"))
        elif line.startswith("    ") and line.strip():
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i])
                i += 1
            commands += _commands(body, every_line=False)
            continue
        i += 1
    return commands, python


def _commands(body: List[str], *, every_line: bool) -> List[str]:
    found, pending = [], ""
    for raw in body:
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        elif not line or line.startswith("#") or not (every_line or line.startswith(COMMAND_WORDS)):
            continue
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        found.append(_normalise(line))
    return found


def documented() -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """({command: [files it is in]}, {"FILE#pythonN": code}) over DOC_FILES."""
    commands: Dict[str, List[str]] = {}
    blocks: Dict[str, str] = {}
    for name in DOC_FILES:
        cmds, python = extract((REPO / name).read_text(encoding="utf-8"))
        for cmd in cmds:
            commands.setdefault(cmd, []).append(name)
        for n, code in enumerate(python, 1):
            blocks[f"{name}#python{n}"] = code
    return commands, blocks


def make_checkout(root: Path) -> Path:
    """A checkout-like folder root/work beside root/shared (-> ../shared), so the docs' relative paths resolve and
    everything the commands write lands under root. tools/ is copied (the tools find the repo from their own path);
    the rest are links. tools/dev.py gets a stand-in venv whose install stamp is current, so it installs nothing."""
    work = root / "work"
    work.mkdir(parents=True)
    shutil.copytree(REPO / "tools", work / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("resbackbones", "configs", "projects", "scripts", "benchmarks", "setup.py"):
        if (REPO / name).exists():
            (work / name).symlink_to(REPO / name)
    if SHARED.exists():
        (root / "shared").symlink_to(SHARED)
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    spec = importlib.util.spec_from_file_location("dev_of_copy", work / "tools" / "dev.py")  # the copy's dev.py
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    assert dev.ROOT == work, dev.ROOT  # the copy fingerprints the checkout's files
    (venv / ".resbackbones-installed").write_text(dev.install_fingerprint())
    return work


def environment(root: Path) -> Dict[str, str]:
    env = dict(os.environ, RESBACKBONES_VENV=str(root / "venv"), RESBACKBONES_DATA=str(root / "cache"),
               RESBACKBONES_CACHE=str(root / "cache"), TORCH_HOME=str(root / "torch_home"), OMP_NUM_THREADS="1",
               PATH=f"{root / 'venv' / 'bin'}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               # place_torchvision_resnet50 puts random stand-ins under torchvision's hashed names, which the reader
               # would refuse as "not the file its name promises"
               RESBACKBONES_UNCHECKED_TORCHVISION_CACHE="1")
    env.pop("CI", None)  # dev.py under CI insists on the detectron2 archive; quickstart does not need it
    return env


def place_torchvision_resnet50(torch_home: Path) -> None:
    """Random torchvision ResNet-50 weights under both IMAGENET1K file names, in torch_home's download cache (the
    tests never download). BN statistics are those of the random init, so FrozenBN is the identity."""
    import torch
    import torchvision

    folder = torch_home / "hub" / "checkpoints"
    if (folder / "resnet50-0676ba61.pth").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), folder / "resnet50-0676ba61.pth")
    os.link(folder / "resnet50-0676ba61.pth", folder / "resnet50-11ad3fa6.pth")


def write_coco_pair(folder: Path) -> None:
    """folder/GT.json (4 shapes images with masks) and folder/DETECTIONS.json (its ground truth as detections)."""
    from pycocotools.coco import COCO

    from resbackbones.data.shapes import write_shapes_coco

    root = write_shapes_coco(folder / "coco", num_images=4, seed=5, image_size=192)
    gt = json.loads((root / "annotations.json").read_text())
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = []
    for ann in gt["annotations"]:
        rle = coco.annToRLE(ann)
        counts = rle["counts"]
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                     "score": 1.0, "segmentation": {"size": rle["size"], "counts": counts.decode() if isinstance(counts, bytes) else counts}})
    (folder / "GT.json").write_text(json.dumps(gt))
    (folder / "DETECTIONS.json").write_text(json.dumps(dets))
    images = folder / "DIR"
    images.mkdir()
    for image in gt["images"][:2]:
        shutil.copy(root / "images" / image["file_name"], images / image["file_name"])
