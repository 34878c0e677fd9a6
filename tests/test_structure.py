"""Ratchets for the layout (issues 15 and 23): small files, thin tools without sys.path edits, one copy of each name
and of the training step, no private reach into backbones, and the layer order of the subpackages (LAYERS below).
Each allow-list below records today's offenders at today's values: they may only shrink (a refactor that fixes one
lowers or deletes its entry), and nothing new may join them."""
import re
from pathlib import Path
from typing import Dict, Iterable, List

from conftest import REPO

PACKAGE = REPO / "resbackbones"
TOOLS = REPO / "tools"

MAX_PACKAGE_LINES = 400
MAX_TOOL_LINES = 100
# Today's offenders at today's sizes; may only shrink.
PACKAGE_LINES_ALLOWED: dict = {}
TOOL_LINES_ALLOWED: dict = {}
# Tools that still put the checkout on sys.path; may only shrink (the editable install makes the edit unnecessary).
TOOLS_WITH_SYS_PATH_ALLOWED: set = set()
# detection/transform.py only, since data/det_transforms.py's became DetectionAugmentation (step 4a).
DETECTION_TRANSFORM_CLASSES_ALLOWED = 1
# Files outside backbones/base.py that read Backbone._stage_shapes; may only shrink.
STAGE_SHAPES_READERS_ALLOWED = {"backbones/vgg.py"}
# Files holding a call of each piece of the training step: the one loop core (engine/loop.py, issue 15 step 10).
STEP_CALL_FILES_ALLOWED = {
    "scaler.scale(": 1,
    "clip_and_check_grads(": 1,
    "torch.isfinite(loss": 1,
}


def _package_files() -> List[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path, root: Path = PACKAGE) -> str:
    return path.relative_to(root).as_posix()


def _line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _oversized(files: Iterable[Path], root: Path, limit: int, allowed: Dict[str, int]) -> List[str]:
    problems = []
    for path in files:
        name, lines = _rel(path, root), _line_count(path)
        cap = allowed.get(name, limit)
        if lines > cap:
            problems.append(f"{name}: {lines} lines > {cap}" + (" (allow-list: may only shrink)" if name in allowed
                                                                  else ""))
    return problems


def test_package_files_stay_small():
    assert _oversized(_package_files(), PACKAGE, MAX_PACKAGE_LINES, PACKAGE_LINES_ALLOWED) == []


def test_tools_stay_thin():
    assert _oversized(sorted(TOOLS.glob("*.py")), TOOLS, MAX_TOOL_LINES, TOOL_LINES_ALLOWED) == []


def test_allow_lists_name_only_current_offenders():
    # An entry left behind after its file was fixed (or moved) would let the file grow back unnoticed.
    stale = [f"{name}: {_line_count(root / name) if (root / name).exists() else 'missing'}"
             for root, allowed, limit in ((PACKAGE, PACKAGE_LINES_ALLOWED, MAX_PACKAGE_LINES),
                                          (TOOLS, TOOL_LINES_ALLOWED, MAX_TOOL_LINES))
             for name in allowed if not (root / name).exists() or _line_count(root / name) <= limit]
    stale += [f"{name}: no sys.path" for name in sorted(TOOLS_WITH_SYS_PATH_ALLOWED)
              if not (TOOLS / name).exists() or "sys.path" not in (TOOLS / name).read_text(encoding="utf-8")]
    assert stale == [], "delete these allow-list entries"


def test_no_new_sys_path_edits_in_tools():
    editing = {path.name for path in TOOLS.glob("*.py") if "sys.path" in path.read_text(encoding="utf-8")}
    assert editing <= TOOLS_WITH_SYS_PATH_ALLOWED, sorted(editing - TOOLS_WITH_SYS_PATH_ALLOWED)


def test_one_detection_transform_class():
    pattern = re.compile(r"^\s*class DetectionTransform\b", re.MULTILINE)
    found = [_rel(p) for p in _package_files() if pattern.search(p.read_text(encoding="utf-8"))]
    assert len(found) <= DETECTION_TRANSFORM_CLASSES_ALLOWED, found


def test_stage_shapes_stay_private_to_backbone_base():
    readers = {_rel(p) for p in _package_files()
               if "._stage_shapes" in p.read_text(encoding="utf-8")} - {"backbones/base.py"}
    assert readers <= STAGE_SHAPES_READERS_ALLOWED, sorted(readers - STAGE_SHAPES_READERS_ALLOWED)


def test_training_step_pieces_are_called_from_few_files():
    files = _package_files() + sorted(TOOLS.glob("*.py"))
    for needle, allowed in STEP_CALL_FILES_ALLOWED.items():
        # A definition line ("def clip_and_check_grads(") is not a call site.
        call = re.compile(r"^(?!\s*def ).*" + re.escape(needle), re.MULTILINE)
        callers = [_rel(p, REPO) for p in files if call.search(p.read_text(encoding="utf-8"))]
        assert len(callers) <= allowed, (needle, callers)


TASK_TRAINERS = ("engine/cls_trainer.py", "engine/det_trainer.py")
# What only the run (engine/loop.py, engine/checkpoint.py) may do: resume, save, collect states (issue 23).
RUN_CODE = re.compile(r"\bdef (state_dict|load_state_dict|save\w*|_save\w*|resume\w*|_resume\w*|_load|_read_resume)\b|"
                      r"\b(save_atomic|torch\.save|load_checkpoint|restore_rng_state|gathered_rng_state|"
                      r"find_resume_checkpoint|load_optimizer_state|CheckpointManager|Checkpointer)\b|"
                      r"\.state_dict\(\)|DistributedDataParallel")


def test_task_trainers_only_say_what_the_task_is():
    """The Trainer owns the run: each task trainer stays under 200 lines and holds no resume, save, state_dict or
    DDP code (detectron2's DefaultTrainer: the tasks build model, data, losses and evaluation)."""
    for name in TASK_TRAINERS:
        text = (PACKAGE / name).read_text(encoding="utf-8")
        assert len(text.splitlines()) < 200, (name, len(text.splitlines()))
        found = sorted({m.group(0) for m in RUN_CODE.finditer(text)})
        assert not found, (name, found)


# -- the one output rule (issue 21): every file written goes through resbackbones/io/outputs.py -----------------------
OUTPUT_MODULE = "resbackbones/io/outputs.py"
# tools/dev.py runs before the package is installed (standard library only): the one permanent exception.
DIRECT_WRITERS_EXEMPT = {"tools/dev.py"}
# Files that still write directly, owned by engineers migrating them now; may only shrink.
DIRECT_WRITERS_ALLOWED: set = set()
_WRITE_CALLS = {"torch.save", "cv2.imwrite", "json.dump", "torch.jit.save", "torch.export.save", "np.save",
                "numpy.save", "np.savez", "np.savez_compressed"}
_WRITE_METHODS = {"write_text", "write_bytes", "savefig", "save_file", "imwrite"}  # any receiver: path.write_text(...)
_WRITE_MODE = re.compile(r"^[rbt]*[wax+][rwaxbt+]*$")


def _dotted(node) -> str:
    import ast

    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _opens_for_writing(call) -> bool:
    """open(path, "w"), Path.open("a"), io.open(..., mode="wb"), "rb+": any mode that writes."""
    import ast

    name = _dotted(call.func)
    if name not in ("open", "io.open") and not (isinstance(call.func, ast.Attribute) and call.func.attr == "open"
                                                and name not in ("os.open", "tarfile.open", "Image.open")):
        return False
    modes = [kw.value for kw in call.keywords if kw.arg == "mode"] + list(call.args[:2])
    return any(isinstance(m, ast.Constant) and isinstance(m.value, str) and _WRITE_MODE.match(m.value) for m in modes)


def _direct_writes(path: Path) -> List[str]:
    """'line: call' for each call in `path` that writes a file without the output module."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else name
        if name in _WRITE_CALLS or method in _WRITE_METHODS or _opens_for_writing(node):
            found.append(f"{node.lineno}: {name or method}")
    return found


def _direct_writers() -> Dict[str, List[str]]:
    files = _package_files() + sorted(TOOLS.glob("*.py"))
    writers = {_rel(p, REPO): _direct_writes(p) for p in files if _rel(p, REPO) != OUTPUT_MODULE}
    return {name: calls for name, calls in writers.items() if calls and name not in DIRECT_WRITERS_EXEMPT}


def test_every_write_goes_through_the_output_module():
    """No open(..., "w"/"a"/"x"/"+"), torch.save, cv2.imwrite, json.dump, safetensors save_file, write_text /
    write_bytes, savefig, torch.jit.save, torch.export.save or np.save outside resbackbones/io/outputs.py: each
    bypasses the rule (atomic, checked, never onto an input or another run's files, never silently replaced)."""
    writers = _direct_writers()
    new = {name: calls for name, calls in writers.items() if name not in DIRECT_WRITERS_ALLOWED}
    assert new == {}, "write through resbackbones/io/outputs.py (write_atomic, write_json_atomic, write_image, ...)"
    fixed = DIRECT_WRITERS_ALLOWED - set(writers)
    assert not fixed, f"these write through the output module now: delete them from DIRECT_WRITERS_ALLOWED: {fixed}"


def test_the_direct_write_detector_sees_each_form(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text('open(p, "w")\nopen(p, mode="ab")\nPath(p).open("w")\nopen(p, "rb+")\ntorch.save(x, p)\n'
                      'cv2.imwrite(p, a)\njson.dump(d, f)\nsave_file(t, p)\np.write_text("x")\nfig.savefig(p)\n'
                      'torch.jit.save(m, p)\ntorch.export.save(m, p)\nnp.save(p, a)\n'
                      'open(p)\nopen(p, "rb")\njson.dumps(d)\nos.open(p, 0)\ntarfile.open(p, mode="r:")\n')
    assert [line.split(":")[0] for line in _direct_writes(source)] == [str(i) for i in range(1, 14)]


def _sys_path_edits(path: Path) -> List[int]:
    """Lines of code (not strings) in `path` that change sys.path: a call of one of its methods or an assignment."""
    import ast

    edits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value  # sys.path.insert(...), sys.path.append(...)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t.value if isinstance(t, ast.Subscript) else t for t in targets), None)
        if (isinstance(target, ast.Attribute) and target.attr == "path" and isinstance(target.value, ast.Name)
                and target.value.id == "sys"):
            edits.append(node.lineno)
    return edits


def test_no_sys_path_edits_in_tests():
    """Tests import tools and benchmarks through pytest.ini's pythonpath, projects through load_project_module:
    no test file edits sys.path (a shim script written for a subprocess, a string, does not count)."""
    tests = Path(__file__).resolve().parent
    offenders = {p.name: lines for p in sorted(tests.glob("*.py")) if (lines := _sys_path_edits(p))}
    assert not offenders, f"sys.path edits in tests: {offenders}"


# -- layers (issue 23 step 3): the folder tree is the data flow, each subpackage imports only those below it --------
# Bottom to top. A package may import from packages on an earlier line only (a line is a rank; packages on one line
# may not import each other). Import-time, deferred (inside a function) and TYPE_CHECKING imports all count: a
# deferred import is still a dependency, it only hides a cycle.
LAYERS = (
    ("utils",),                      # errors, distributed (comm), device / AMP, FLOPs: no package imports
    ("io",),                         # the one output rule: atomic, checked writes; registered inputs
    ("config",),                     # the schemas (training, model) and the YAML loader: descriptions, no builders
    ("layers",),                     # conv / norm / blocks / shape specs
    ("weights",),                    # the one reader and writer of weights and checkpoints, converters
    ("backbones",),                  # image -> stages
    ("necks",),                      # stages -> FPN levels
    ("data",),                       # datasets, transforms, loaders
    ("detection",),                  # FPN levels -> RPN / RoI heads -> boxes, masks
    ("evaluation",),                 # detections -> COCO metrics
    ("engine",),                     # the Trainer that owns the run
    ("deploy", "integrations", "inference", "visualize"),  # users of everything below
)


def _subpackage_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_subpackages(path: Path) -> Dict[str, List[int]]:
    """{subpackage of resbackbones imported by `path`: [line, ...]}, relative and absolute imports alike."""
    import ast

    rel = path.relative_to(PACKAGE)
    found: Dict[str, List[int]] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules: List[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel.parts[:-1])[:len(rel.parts) - node.level]  # the package `node.level` dots name
                if node.module:
                    modules = [".".join(base + [node.module])]
                else:
                    modules = [".".join(base + [alias.name]) for alias in node.names]
            elif node.module and node.module.startswith("resbackbones."):
                modules = [node.module[len("resbackbones."):]]
            elif node.module == "resbackbones":
                modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name[len("resbackbones."):] for a in node.names if a.name.startswith("resbackbones.")]
        for module in modules:
            if module:
                found.setdefault(module.split(".")[0], []).append(node.lineno)
    return found


def _import_edges() -> Dict[tuple, List[str]]:
    """{(importer, imported): ["file:line", ...]} between different subpackages (the root __init__ excluded)."""
    edges: Dict[tuple, List[str]] = {}
    for path in _package_files():
        if path == PACKAGE / "__init__.py":
            continue
        source = _subpackage_of(path)
        for target, lines in _imported_subpackages(path).items():
            if target != source:
                edges.setdefault((source, target), []).extend(f"{_rel(path)}:{line}" for line in lines)
    return edges


def test_layer_table_names_every_subpackage():
    ranked = {name for line in LAYERS for name in line}
    present = {_subpackage_of(p) for p in _package_files()} - {"__init__"}
    assert present == ranked, f"add to / remove from LAYERS: {sorted(present ^ ranked)}"


def test_subpackages_import_only_downwards():
    """No import of a package on the same or a higher line of LAYERS, so no cycle between subpackages either."""
    rank = {name: index for index, line in enumerate(LAYERS) for name in line}
    upward = {f"{a} -> {b}": where for (a, b), where in _import_edges().items()
              if b in rank and a in rank and rank[b] >= rank[a]}
    assert upward == {}, f"imports against the layer order (move the shared code down instead): {upward}"


def test_import_graph_between_subpackages_has_no_cycle():
    # Redundant with the layer order as long as LAYERS is right; stated on its own so a wrong LAYERS edit that
    # allowed a cycle would still fail here with the cycle spelled out.
    graph: Dict[str, set] = {}
    for a, b in _import_edges():
        graph.setdefault(a, set()).add(b)

    def cycle_from(node, stack):
        if node in stack:
            return stack[stack.index(node):] + [node]
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, stack + [node])
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(n, []) for n in sorted(graph)) if c]
    assert not cycles, " -> ".join(cycles[0])


def test_the_layer_check_sees_each_import_form(tmp_path, monkeypatch):
    package = tmp_path / "resbackbones"
    (package / "evaluation").mkdir(parents=True)
    sample = package / "evaluation" / "sample.py"
    sample.write_text("from ..engine.loop import x\nfrom .. import engine\nimport resbackbones.engine.hooks\n"
                      "from resbackbones.engine import y\ndef f():\n    from ..engine import z\n"
                      "from .coco import w\nfrom ..utils.errors import E\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    assert _imported_subpackages(sample) == {"engine": [1, 2, 3, 4, 6], "evaluation": [7], "utils": [8]}
