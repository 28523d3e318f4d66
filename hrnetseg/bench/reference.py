"""The reference methods: the ModelZoo scripts' preprocess and postprocess, restated, as the benchmark's baselines.

Benchmark-only: the reference postprocess needs torch (imported inside the function). Not for the Atlas host.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional

import numpy as np

from hrnetseg.data import cityscapes
from hrnetseg.data.cityscapes import NUM_CLASSES


def reference_preprocess(src_path: str, save_path: str, split: str = "val", limit: Optional[int] = None) -> List[str]:
    """One process; per image (listed with its label): read image and label, the upstream transform,
    float32 CHW `tofile` as `<label stem>.bin`. Returns the paths written."""
    import cv2

    os.makedirs(save_path, exist_ok=True)
    samples = [s for s in cityscapes.find_images(src_path, split) if s.label is not None][:limit]
    written = []
    for sample in samples:
        image = cv2.imread(sample.image, cv2.IMREAD_COLOR)
        cv2.imread(sample.label, cv2.IMREAD_GRAYSCALE)  # the ModelZoo scripts' dataset reads the label too
        chw = cityscapes.reference_transform(image)
        path = os.path.join(save_path, os.path.splitext(os.path.basename(sample.label))[0] + ".bin")
        chw.astype(np.float32).tofile(path)
        written.append(path)
    return written


def reference_postprocess(res_path: str, data_path: str, first_index: int = 0) -> dict:
    """One process; outputs and labels paired by sort order (as the ModelZoo scripts do); per image both outputs
    (19 x h x w float32) upsampled with torch's F.interpolate (bilinear, align_corners=True) to label size,
    numpy argmax, np.bincount into a 19x19 confusion per output; IoU = TP / max(1, TP + FP + FN) for all 19
    classes, mean of the 19. Returns the ModelZoo scripts' result block for the main output, plus its
    confusion matrix.

    The label is mapped to trainIds with a table (the upstream loop over the mapping is slower, so the
    baseline errs on the fast side).
    """
    import cv2
    import torch
    import torch.nn.functional as F

    labels = sorted(glob.glob(os.path.join(data_path, "*", "*" + cityscapes.LABEL_SUFFIX)))
    outputs = [sorted(glob.glob(os.path.join(res_path, "*_{}.bin".format(first_index + k)))) for k in range(2)]
    matrices = [np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64) for _ in range(2)]
    for index, label_path in enumerate(labels):
        label = cityscapes.ID_TO_TRAIN[cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)]
        height, width = label.shape
        shape = (1, NUM_CLASSES, -(-height // 4), -(-width // 4))
        valid = label != cityscapes.IGNORE
        gt = label[valid].astype(np.int64)
        for k in range(2):
            logits = torch.from_numpy(np.fromfile(outputs[k][index], dtype=np.float32).reshape(shape))
            up = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
            pred = np.asarray(np.argmax(up.numpy(), axis=1), dtype=np.uint8)[0]
            counts = np.bincount(gt * NUM_CLASSES + pred[valid], minlength=NUM_CLASSES * NUM_CLASSES)
            matrices[k] += counts.reshape(NUM_CLASSES, NUM_CLASSES)
    main = matrices[1]
    tp = np.diag(main).astype(np.float64)
    iou = tp / np.maximum(1.0, main.sum(axis=0) + main.sum(axis=1) - tp)
    return {"title": "overall statistical evaluation",
            "value": {"Iou_array": iou.tolist(), "mean_Iou": float(iou.mean())},
            "confusion_matrix": main.tolist(), "images": len(labels)}
