"""The embedded shapes data set and the generic image + caption loader."""

import numpy as np
import pytest
import torch

from splitldm.eval import data
from splitldm.pipeline.tokenizer import DEFAULT_WORDS, build_clip_tokenizer


def test_same_seed_same_images_and_splits_differ():
    a = data.shapes_dataset(6, "train", seed=3)
    b = data.shapes_dataset(6, "train", seed=3)
    c = data.shapes_dataset(6, "test", seed=3)
    for i in range(6):
        assert np.array_equal(np.asarray(a[i]["image"]), np.asarray(b[i]["image"]))
        assert a[i]["caption"] == b[i]["caption"]
    assert any(not np.array_equal(np.asarray(a[i]["image"]), np.asarray(c[i]["image"])) for i in range(6))
    x1, _, _ = data.render_batch(range(4), seed=1)
    x2, _, _ = data.render_batch(range(4), seed=2)
    assert not torch.equal(x1, x2)


def test_columns_types_and_caption_attribute_consistency():
    ds = data.shapes_dataset(12, "train")
    assert set(ds.column_names) == {"image", "caption", *data.ATTRIBUTE_NAMES}
    tok = build_clip_tokenizer()
    for row in ds:
        assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
        attrs = {k: row[k] for k in data.ATTRIBUTE_NAMES}
        assert all(isinstance(v, int) for v in attrs.values())
        assert row["caption"] == data.make_caption(**attrs)
        assert data.parse_caption(row["caption"]) == attrs
        # every caption word is a single token of the shipped tokenizer
        ids = tok(row["caption"]).input_ids
        assert len(ids) == len(row["caption"].split()) + 2


def test_every_combination_round_trips_and_uses_vocabulary():
    combos = data.all_combinations()
    assert len(combos) == 6 * 4 * 2 * 5 * 3
    for s in combos:
        cap = s.caption()
        assert all(w in DEFAULT_WORDS for w in cap.split())
        assert data.parse_caption(cap) == s.as_dict()


def test_rendered_pixels_follow_attributes():
    # colour: the shape's centre pixel is near the named colour; background: a corner far from the shape
    img = data.render(data.Scene(color=0, shape=1, size=1, position=4, background=0))  # large red square, centre, black
    x = np.asarray(img).astype(int)
    assert x[32, 32, 0] > 180 and x[32, 32, 1] < 80
    assert x[0, 0].max() < 40
    img = data.render(data.Scene(color=2, shape=0, size=0, position=0, background=1))  # small blue circle top left, white
    x = np.asarray(img).astype(int)
    assert x[17, 17, 2] > 180 and x[17, 17, 0] < 80
    assert x[60, 60].min() > 200


def test_holdout_combinations_are_disjoint_from_train():
    held = data.heldout_combinations()
    assert len(held) == 72
    rng = np.random.default_rng(0)
    for _ in range(300):
        assert data.sample_scene(rng, "train", holdout_combos=True) not in held
        assert data.sample_scene(rng, "test", holdout_combos=True) in held


def test_parse_caption_partial_and_bad_input():
    assert data.parse_caption("a blue circle")["color"] == 2
    assert data.parse_caption("a blue circle")["position"] is None
    assert data.parse_caption("something at the centre")["position"] == 4
    with pytest.raises(TypeError, match="caption"):
        data.parse_caption(3)
    with pytest.raises(ValueError, match="split"):
        data.shapes_dataset(2, "validation")
    with pytest.raises(ValueError, match="num_examples"):
        data.shapes_dataset(0)


def test_imagefolder_loader(tmp_path):
    folder = data.write_imagefolder(tmp_path / "set", num_examples=5, seed=4)
    out = data.load_image_caption_dataset(folder, image_size=32, cache_dir=str(tmp_path / "cache"))
    assert out.images.shape == (5, 3, 32, 32) and out.images.dtype == torch.float32
    assert 0.0 <= float(out.images.min()) and float(out.images.max()) <= 1.0
    ref_imgs, ref_caps, _ = data.render_batch(range(5), seed=4)
    assert sorted(out.captions) == sorted(ref_caps)
    full = data.load_image_caption_dataset(folder, image_size=64, cache_dir=str(tmp_path / "cache"))
    # PNG is lossless: the pixels round-trip exactly (order may differ)
    order = [ref_caps.index(c) for c in full.captions] if len(set(ref_caps)) == 5 else None
    if order is not None:
        assert torch.allclose(full.images, ref_imgs[order], atol=1e-6)


def test_imagefolder_loader_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        data.load_image_caption_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="source"):
        data.load_image_caption_dataset(str(tmp_path / "nope"))
    with pytest.raises(TypeError, match="source"):
        data.load_image_caption_dataset(3)
