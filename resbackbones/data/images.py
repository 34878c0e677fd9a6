"""The one conversion from a decoded image to the tensor a detector takes (dataset, evaluation, prediction, export).

    image = read_image(path)          # RGB uint8 [H, W, 3] (data/folders.py)
    tensor = image_to_tensor(image)   # float32 [3, H, W] in [0, 1]
"""
import numpy as np
import torch


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1], contiguous (a new tensor; `image` is not shared).

    Scaling to [0, 1] only: the detector normalises (model.input.image_mean / image_std), so every caller hands it
    the same pixels whether it trains, evaluates or predicts.
    """
    # Contiguous CHW (not a permuted view): a permuted (channels-last) stride can select other resize kernels in the model.
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
