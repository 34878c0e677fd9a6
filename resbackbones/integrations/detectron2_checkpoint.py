"""Weights and checkpoints between detectron2 models and our files: export_backbone_weights (a detectron2 model's
backbone -> our safetensors with its conventions), save_for_detectron2 (our file -> a .pth any DetectionCheckpointer
loads) and ResBackbonesCheckpointer (detectron2's checkpointer under the library's reader and output rule);
re-exported by integrations/detectron2.py."""
import os
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..io.outputs import save_torch_atomic, write_text_atomic
from ..weights import WeightsError, load_with_metadata, save
from .detectron2_adapter import ResBackbone, model_conventions
from .detectron2_conventions import refuse_mismatch
from .detectron2_weights import conventions_from_metadata, conventions_to_metadata, from_detectron2_names, \
    to_detectron2_names


# -- weights --------------------------------------------------------------------------------------------------
def _our_adapter(model: torch.nn.Module) -> ResBackbone:
    adapters = [m for m in model.modules() if isinstance(m, ResBackbone)]
    if len(adapters) != 1:
        raise ValueError(f"expected one resbackbones backbone in the model, found {len(adapters)}")
    return adapters[0]


def export_backbone_weights(model: torch.nn.Module, path: str, *, arch: Optional[str] = None) -> str:
    """Save the backbone of a detectron2 model using ours as our weight file (names `stages.*`), with metadata
    recording the model's input_format, pixel mean/std and stride_in_1x1 so it cannot be mixed up later."""
    adapter = _our_adapter(model)
    state = from_detectron2_names(adapter.state_dict(), stage_names=adapter.body.stage_names)
    arch = arch or getattr(adapter, "arch", None) or "unknown"
    metadata = conventions_to_metadata(model_conventions(model), arch=arch, source="detectron2")
    save(state, path, metadata=metadata)
    return str(path)


def save_for_detectron2(weights_path: str, out_path: str) -> str:
    """Rewrite our weight file as a detectron2 checkpoint (.pth) any DetectionCheckpointer loads as MODEL.WEIGHTS:
    {"model": {res2.0.conv1.weight: ...}, "matching_heuristics": True, "resbackbones_metadata": {...}}.

    matching_heuristics lets detectron2 place the names under backbone.bottom_up. (FPN), backbone. (C4) and
    roi_heads.res5 (C4 heads), as it does for its own ImageNet .pkl files. Plain DetectionCheckpointer does not
    check conventions: ResBackbonesCheckpointer does.
    """
    state, metadata = load_with_metadata(weights_path)
    names = {k: v.contiguous() for k, v in to_detectron2_names(state, source=weights_path).items()}
    save_torch_atomic({"model": names, "__author__": "resbackbones", "matching_heuristics": True,
                       "resbackbones_metadata": dict(metadata)}, out_path)
    return str(out_path)


class ResBackbonesCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads and writes through the library's rules: every file is loaded by our reader
    (torch files: weights.io.torch_load_refusing_code, record CRCs checked, pickled code refused; detectron2 / caffe2
    .pkl: numpy arrays only; .safetensors and our .pth with metadata: converted names), every checkpoint and the
    last_checkpoint tag are written atomically (io.outputs), and a checkpoint whose recorded conventions
    (input_format, pixel mean/std, stride_in_1x1) differ from the model's is refused.

    Why override detectron2's loader rather than wrap it: fvcore's _load_file is a bare torch.load (no CRC check)
    and detectron2's .pkl branch is pickle.load, which runs whatever code the file names."""

    def _load_file(self, filename: str):
        if filename.endswith(".safetensors"):
            state, metadata = load_with_metadata(filename)
            return self._ours(state, metadata, filename)
        if filename.endswith(".pkl"):
            return self._model_zoo_pickle(filename)
        loaded = super()._load_file(filename)
        if isinstance(loaded.get("model"), dict) and "state_dict" in loaded["model"] and "metadata" in loaded["model"]:
            return self._ours(loaded["model"]["state_dict"], loaded["model"]["metadata"], filename)
        return loaded

    def _torch_load(self, f: str):
        from ..weights.io import torch_load_refusing_code

        loaded = torch_load_refusing_code(f, file_kind="checkpoint", what="checkpoint ")
        if not isinstance(loaded, dict):
            raise WeightsError(f"checkpoint {f} holds a {type(loaded).__name__}, not a dict of tensors")
        return loaded

    @staticmethod
    def _model_zoo_pickle(filename: str):
        """detectron2's .pkl rules (detection_checkpoint.py), on a numpy-only unpickler."""
        from ..weights.convert_detectron2 import read_pickle

        data = read_pickle(filename)
        if not isinstance(data, dict):
            raise WeightsError(f"{filename} holds a {type(data).__name__}, not a detectron2 / caffe2 model dict")
        if "model" in data and "__author__" in data:
            return data
        if "blobs" in data:  # detection models have "blobs", ImageNet models do not
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def save(self, name: str, **kwargs) -> None:
        """fvcore's save, written atomically (a kill mid-save leaves the previous file, never a torn one)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        save_torch_atomic(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self.save_to_disk:
            write_text_atomic(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    @staticmethod
    def _ours(state, metadata, filename):
        if any(k.startswith(("stages.", "backbone.stages.")) for k in state):
            state = to_detectron2_names(state, source=filename)
        return {"model": dict(state), "__author__": "resbackbones", "matching_heuristics": True,
                "resbackbones_metadata": dict(metadata)}

    def _load_model(self, checkpoint):
        metadata = checkpoint.pop("resbackbones_metadata", None)
        if metadata:
            refuse_mismatch(conventions_from_metadata(metadata), model_conventions(self.model), source="checkpoint")
        return super()._load_model(checkpoint)
