"""Training a small HRNet-OCR on the synthetic scenes, and scoring it on held-out ones (the reference model).

The recipe follows upstream HRNet-OCR's Cityscapes training in spirit: random scale, crop and horizontal flip of
each sample, cross-entropy on the logits upsampled to the label size (bilinear, align_corners=True), ignore label
255, the aux head weighted 0.4 and the OCR head 1.0 (upstream's LOSS.BALANCE_WEIGHTS), polynomial learning-rate
decay (power 0.9). Everything is counted in iterations and seeded, so one command gives the same bytes every time
on one machine and torch version (`torch.use_deterministic_algorithms`, a fixed thread count, one numpy RandomState
per sample).

Scenes are made in memory at the size asked for (`sample_scenes.scene_labels` / `scene_photo` with the random
state `generate` gives scene `index` of seed `seed`), so an evaluation here sees the same pixels as
`python -m hrnetseg.sample_data DIR --seed SEED` writes to PNGs.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from hrnetseg.data.cityscapes import ID_TO_TRAIN, IGNORE, MEAN, NUM_CLASSES, STD
from hrnetseg.data.sample_scenes import scene_labels, scene_photo
from hrnetseg.evaluation.metrics import ConfusionMatrix
from hrnetseg.evaluation.upsample_argmax import logits_to_labels
from hrnetseg.model.network import HRNetOCR, build_model
from hrnetseg.model.random_weights import LOSS_WEIGHT_KEY, MODEL_PREFIX
from hrnetseg.util.files import write_bytes_atomic

# upstream's Cityscapes class weights (lib/datasets/cityscapes.py), stored as loss.criterion.weight
UPSTREAM_CLASS_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023, 0.9539,
                          0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)
AUX_WEIGHT, MAIN_WEIGHT = 0.4, 1.0   # upstream's OCR config, LOSS.BALANCE_WEIGHTS
POLY_POWER = 0.9


@dataclass
class Recipe:
    """One training run, fully determined by these values (and the machine's floating-point behaviour)."""

    preset: str = "tiny_ocr"
    iterations: int = 750
    batch: int = 8
    scenes: int = 300                 # training scenes: RandomState([scene_seed, i]) for i < scenes
    scene_seed: int = 1000            # the `generate` seed of the training scenes
    scene_size: Tuple[int, int] = (512, 1024)   # height, width the training scenes are made at
    crop: Tuple[int, int] = (256, 512)          # height, width of a training sample
    scale: Tuple[float, float] = (0.5, 2.0)     # random rescale of the scene before cropping
    optimizer: str = "adamw"          # adamw | sgd
    lr: float = 1e-2
    weight_decay: float = 1e-4
    momentum: float = 0.9             # sgd only
    class_weights: str = "scenes"     # none | upstream | scenes (from the training scenes' pixel counts)
    ohem_keep: float = 0.0            # > 0: average the loss over this share of the hardest pixels only
    class_crops: float = 0.5          # share of crops placed around a pixel of a class drawn uniformly
    seed: int = 0                     # torch initialisation and dropout
    threads: int = 2

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scenes:
    """Photos (N x H x W x 3 uint8 BGR) and trainIds (N x H x W uint8, 255 ignored)."""

    photos: np.ndarray
    train_ids: np.ndarray
    ids: List[str] = field(default_factory=list)


def make_scene(seed: int, index: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Scene `index` of `generate(..., seed=seed)` at height x width: (BGR photo, trainIds)."""
    rng = np.random.RandomState([seed, index])
    labels = scene_labels(height, width, rng)
    photo = scene_photo(labels, rng)
    return photo, ID_TO_TRAIN[labels]


def make_scenes(seed: int, count: int, height: int, width: int, start: int = 0) -> Scenes:
    photos = np.empty((count, height, width, 3), np.uint8)
    train_ids = np.empty((count, height, width), np.uint8)
    for k in range(count):
        photos[k], train_ids[k] = make_scene(seed, start + k, height, width)
    return Scenes(photos, train_ids, ["seed{}_{}".format(seed, start + k) for k in range(count)])


def class_frequencies(train_ids: np.ndarray) -> np.ndarray:
    counts = np.bincount(train_ids.ravel(), minlength=256)[:NUM_CLASSES].astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def scene_class_weights(train_ids: np.ndarray) -> np.ndarray:
    """ENet's weighting 1 / ln(1.02 + frequency), scaled to mean 1: rare classes count up to ~50x more."""
    weights = 1.0 / np.log(1.02 + class_frequencies(train_ids))
    return (weights / weights.mean()).astype(np.float32)


def class_weights_for(recipe: Recipe, scenes: Scenes) -> Optional[np.ndarray]:
    if recipe.class_weights == "none":
        return None
    if recipe.class_weights == "upstream":
        return np.array(UPSTREAM_CLASS_WEIGHTS, np.float32)
    if recipe.class_weights == "scenes":
        return scene_class_weights(scenes.train_ids)
    raise ValueError("class_weights must be none, upstream or scenes, got {!r}".format(recipe.class_weights))


_MEAN_BGR = tuple(255.0 * m for m in MEAN[::-1])


def normalize(photos: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 BGR uint8 -> N x 3 x H x W float32 RGB, the upstream input transform."""
    image = torch.from_numpy(np.ascontiguousarray(photos[..., ::-1])).float().div_(255.0)
    image = (image - torch.tensor(MEAN)) / torch.tensor(STD)
    return image.permute(0, 3, 1, 2).contiguous()


def augment(photo: np.ndarray, train_ids: np.ndarray, crop: Tuple[int, int], scale: Tuple[float, float],
            rng: np.random.RandomState, around: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Rescale by a random factor, cut a random crop (padding with the mean colour / ignore), flip at random.

    With `around` (row, column of a scene pixel) the crop holds that pixel, at a random place in it. One affine
    warp does all three steps, so only the crop's pixels are computed.
    """
    crop_h, crop_w = crop
    height, width = train_ids.shape
    factor = float(rng.uniform(*scale))
    room_y, room_x = max(height * factor - crop_h, 0), max(width * factor - crop_w, 0)
    if around is None:
        top, left = float(rng.uniform(0, room_y)), float(rng.uniform(0, room_x))
    else:
        top = min(max(around[0] * factor - float(rng.uniform(0, crop_h)), 0), room_y)
        left = min(max(around[1] * factor - float(rng.uniform(0, crop_w)), 0), room_x)
    flip = bool(rng.randint(2))
    if flip:   # x_out = crop_w - 1 - (factor * x - left)
        matrix = np.array([[-factor, 0, crop_w - 1 + left], [0, factor, -top]], np.float64)
    else:
        matrix = np.array([[factor, 0, -left], [0, factor, -top]], np.float64)
    image = cv2.warpAffine(photo, matrix, (crop_w, crop_h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=_MEAN_BGR)
    label = cv2.warpAffine(train_ids, matrix, (crop_w, crop_h), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE)
    return image, label


def class_pixel(train_ids: np.ndarray, rng: np.random.RandomState) -> Tuple[int, int]:
    """A random pixel of a class drawn uniformly from the classes in the map (class-uniform sampling)."""
    present = np.flatnonzero(np.bincount(train_ids.ravel(), minlength=256)[:NUM_CLASSES])
    rows, cols = np.nonzero(train_ids == present[rng.randint(len(present))])
    pick = rng.randint(len(rows))
    return int(rows[pick]), int(cols[pick])


def batch_for(iteration: int, recipe: Recipe, scenes: Scenes) -> Tuple[torch.Tensor, torch.Tensor]:
    """The batch of one iteration: scenes and augmentation drawn from RandomState([seed, iteration])."""
    rng = np.random.RandomState([recipe.seed, iteration])
    picks = rng.randint(0, len(scenes.photos), size=recipe.batch)
    images, labels = [], []
    for pick in picks:
        around = None
        if recipe.class_crops > 0 and rng.uniform() < recipe.class_crops:
            around = class_pixel(scenes.train_ids[pick], rng)
        image, label = augment(scenes.photos[pick], scenes.train_ids[pick], recipe.crop, recipe.scale, rng, around)
        images.append(image)
        labels.append(label)
    return normalize(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor],
                      ohem_keep: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits upsampled to the labels' size (upstream's CrossEntropy); optionally OHEM-style,
    over the hardest `ohem_keep` share of the labelled pixels."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    if ohem_keep <= 0:
        return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE)
    pixel = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE, reduction="none").flatten()
    valid = pixel[labels.flatten() != IGNORE]
    keep = max(1, int(valid.numel() * ohem_keep))
    return torch.topk(valid, keep, sorted=False).values.mean()


def poly_lr(base: float, iteration: int, total: int) -> float:
    return base * (1.0 - iteration / total) ** POLY_POWER


def set_deterministic(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train(recipe: Recipe, scenes: Scenes, log: Optional[Callable[[str], None]] = None,
          log_every: int = 50) -> Tuple[HRNetOCR, List[float]]:
    """Train `recipe.preset` from torch.manual_seed(recipe.seed); return the model (eval mode) and the losses."""
    set_deterministic(recipe.threads)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.preset)
    model.train()
    weights = class_weights_for(recipe, scenes)
    weight = None if weights is None else torch.from_numpy(weights)
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim == 1 else decay).append(param)   # no weight decay on BatchNorm and biases
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    elif recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=False)
    else:
        raise ValueError("optimizer must be adamw or sgd, got {!r}".format(recipe.optimizer))
    losses: List[float] = []
    started = time.time()
    for iteration in range(recipe.iterations):
        lr = poly_lr(recipe.lr, iteration, recipe.iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = batch_for(iteration, recipe, scenes)
        aux, main = model(images)
        loss = (AUX_WEIGHT * segmentation_loss(aux, labels, weight, recipe.ohem_keep)
                + MAIN_WEIGHT * segmentation_loss(main, labels, weight, recipe.ohem_keep))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if log is not None and (iteration + 1) % log_every == 0:
            recent = losses[-log_every:]
            log("iteration {}/{}: loss {:.4f} (mean of the last {}), lr {:.2e}, {:.1f} s".format(
                iteration + 1, recipe.iterations, sum(recent) / len(recent), len(recent), lr,
                time.time() - started))
    model.eval()
    return model, losses


def official_format_state(model: HRNetOCR, class_weights: Optional[np.ndarray] = None) -> Dict[str, torch.Tensor]:
    """The model's weights keyed as the official checkpoint stores them: `model.` + key, and the loss's class
    weights as `loss.criterion.weight` (ones when the run used none)."""
    state = {MODEL_PREFIX + key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    weights = np.ones(model.config.num_classes, np.float32) if class_weights is None else class_weights
    state[LOSS_WEIGHT_KEY] = torch.from_numpy(np.asarray(weights, np.float32).copy())
    return state


def save_official_checkpoint(model: HRNetOCR, path: str, class_weights: Optional[np.ndarray] = None) -> None:
    """torch.save of official_format_state, atomically (a temporary beside the file, then a rename)."""
    buffer = io.BytesIO()
    torch.save(official_format_state(model, class_weights), buffer)
    write_bytes_atomic(path, buffer.getvalue())


@torch.no_grad()
def predict_labels(model: HRNetOCR, photo: np.ndarray) -> np.ndarray:
    """trainIds for one BGR photo: the model at the photo's full size, its main output (output2) upsampled
    bilinearly (align_corners=True) to the photo's size and argmaxed, as the project's postprocess does."""
    _, main = model(normalize(photo[None]))
    return logits_to_labels(main[0].numpy(), photo.shape[0], photo.shape[1])


def evaluate(model: HRNetOCR, seed: int, count: int, height: int, width: int,
             threads: Optional[int] = None) -> dict:
    """mIoU (the result.json dict of hrnetseg.evaluation.metrics) over scenes 0..count-1 of `seed`."""
    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()
    matrix = ConfusionMatrix()
    for index in range(count):
        photo, train_ids = make_scene(seed, index, height, width)
        matrix.update(predict_labels(model, photo), train_ids, "seed{}_{}".format(seed, index))
    return matrix.compute()


def format_per_class(results: Sequence[Tuple[str, dict]]) -> str:
    """A table: one row per class, one column per result (IoU in percent), mIoU last."""
    names = list(results[0][1]["per_class"])
    width = max(len(n) for n in names + ["mIoU"])
    lines = ["{:<{w}}  {}".format("class", "  ".join("{:>10}".format(t) for t, _ in results), w=width)]
    for name in names:
        cells = []
        for _, result in results:
            value = result["per_class"][name]
            cells.append("{:>10}".format("-" if value is None else "{:.2f}".format(100 * value)))
        lines.append("{:<{w}}  {}".format(name, "  ".join(cells), w=width))
    lines.append("{:<{w}}  {}".format("mIoU", "  ".join("{:>10.2f}".format(100 * r["mIoU"]) for _, r in results),
                                      w=width))
    return "\n".join(lines)


