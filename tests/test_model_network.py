"""The model: exact official keys and shapes, any input size, sane random weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hrnetseg.model.network import PRESETS, build_model, init_random_weights

MANIFEST = Path(__file__).parent / "data" / "hrnet_w48_ocr_cityscapes.keys.tsv"


def read_manifest():
    rows = []
    for line in MANIFEST.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(",") if s), dtype))
    return rows


def test_w48_ocr_has_exactly_the_official_keys_shapes_and_dtypes():
    expected = read_manifest()
    state = build_model("w48_ocr").state_dict()
    assert len(expected) == 1890
    assert list(state) == [key for key, _, _ in expected]
    for key, shape, dtype in expected:
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype) == "torch." + dtype, key
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                        "num_batches_tracked")))
    assert abs(params / 1e6 - 70.4) < 0.05


def test_cli_preset_names_match_the_model_table():
    from hrnetseg.model.presets import DEFAULT_PRESET, PRESET_NAMES

    assert set(PRESET_NAMES) == set(PRESETS) and DEFAULT_PRESET in PRESETS


@pytest.mark.parametrize("height,width", [(128, 256), (250, 500), (97, 203)])
def test_any_input_size_gives_quarter_resolution_logits(height, width):
    model = init_random_weights(build_model("tiny_ocr"), seed=0).eval()
    with torch.no_grad():
        aux, main = model(torch.randn(2, 3, height, width))
    expected = (2, 19, -(-height // 4), -(-width // 4))
    assert tuple(aux.shape) == expected and tuple(main.shape) == expected


def test_random_weights_keep_w48_activations_finite_and_varied():
    model = init_random_weights(build_model("w48_ocr"), seed=3).eval()
    with torch.no_grad():
        aux, main = model(torch.randn(1, 3, 64, 128))
    for out in (aux, main):
        assert torch.isfinite(out).all()
        assert 1e-2 < out.std().item() < 1e3
    # different pixels get different classes: the network is not collapsed to a constant
    assert main.argmax(1).unique().numel() > 1


def test_random_weights_are_seeded():
    a = init_random_weights(build_model("tiny_ocr"), seed=5).state_dict()
    b = init_random_weights(build_model("tiny_ocr"), seed=5).state_dict()
    c = init_random_weights(build_model("tiny_ocr"), seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert all((v > 0).all() for k, v in a.items() if k.endswith("running_var"))


def test_upsampling_is_bilinear_align_corners_to_the_joined_size():
    """A branch-2 map resized into branch 1 keeps its corner values: align_corners=True."""
    from hrnetseg.model.network import resize_to

    small = torch.arange(6.0).view(1, 1, 2, 3)
    big = resize_to(small, torch.zeros(1, 1, 5, 7))
    assert big.shape[-2:] == (5, 7)
    assert big[0, 0, 0, 0] == 0 and big[0, 0, -1, -1] == 5 and big[0, 0, 0, -1] == 2
