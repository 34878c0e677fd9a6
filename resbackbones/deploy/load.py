"""load_detector(checkpoint, config): a tools/train_det.py checkpoint back as an eval-mode detector with its class names.

    loaded = load_detector("output/quickstart/last.pt")          # config.yaml beside the checkpoint
    loaded.model([image])                                        # image float [3, H, W] RGB in [0, 1]
    loaded.label_names                                           # {1: "person", ...}: model label -> category name
"""
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from torch import nn

from ..config import ConfigError, load_config
from ..detection.train_config import DetTrainConfig
from ..engine.checkpoint import load_checkpoint, load_matching_state


@dataclass
class LoadedDetector:
    model: nn.Module            # torchvision FasterRCNN / MaskRCNN from build_detector, eval mode, on CPU
    config: DetTrainConfig      # what it was built from
    config_path: Path
    label_names: Dict[int, str]  # model label (1..num_classes) -> category name (its id as text when unnamed)

    def names_list(self) -> List[str]:
        """label_names as a list indexed by label, "__background__" at 0 (TorchScript-friendly)."""
        count = self.config.model.num_classes + 1
        return ["__background__"] + [self.label_names.get(label, str(label)) for label in range(1, count)]


def load_detector(checkpoint, config=None, overrides: Sequence[str] = (), *, source=None) -> LoadedDetector:
    """Build the detector of `config` (a file, a loaded DetTrainConfig, or None: config.yaml beside the checkpoint,
    written by tools/train_det.py) and load every weight from `checkpoint`. Raises ConfigError / CheckpointError
    in one line. source: how messages name a given DetTrainConfig (e.g. the file it was read from)."""
    from ..detection.builder import build_detector

    checkpoint = Path(checkpoint)
    if isinstance(config, DetTrainConfig):
        cfg, config_path = copy.deepcopy(config), Path(source or "(the given config)")
    else:
        config_path = Path(config) if config else checkpoint.parent / "config.yaml"
        if not config and not config_path.is_file():
            raise ConfigError(f"{checkpoint} has no config.yaml beside it: give --config, the config it was trained "
                              f"with")
        cfg = load_config(DetTrainConfig, config_path, overrides)
    cfg.model.backbone.weights = ""  # the checkpoint holds every weight
    state = load_checkpoint(checkpoint, map_location="cpu")
    model = build_detector(cfg.model)
    load_matching_state(model, state["model"], checkpoint=checkpoint, model_source=str(config_path))
    by_id = {int(c["id"]): str(c["name"]) for c in state.get("categories", [])}
    names = {int(label): by_id.get(int(cat), str(cat)) for label, cat in state.get("label_to_category", {}).items()}
    return LoadedDetector(model.eval(), cfg, config_path, names)

