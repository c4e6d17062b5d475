"""The validation layer (`splitldm.checks`) and the boundaries that use it: seeds and numbers, folders and
configs of every loader (absurd sizes refused before allocation, symlinks out, files that are not JSON,
wrong types), and the arrays that enter the ES (`SplitPipeline.edge`) and the channels.

Property tests (Hypothesis, bounded) feed `read_config` random JSON and random bytes: it returns the
object or raises ValueError, nothing else.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitldm import checks
from splitldm.checks import Bound, check_float, check_int, check_output_path, check_seed, read_config

# ============================================================================ numbers and seeds
_SEEDS = [  # (value, exception, needle, kind, outcome)
    (2 ** 64, ValueError, "2\\*\\*64 - 1", "a seed that overflows 64 bits (2**64)", "ValueError naming the seed and [0, 2**64 - 1]"),
    (-1, ValueError, "seed", "a negative seed", "ValueError naming the seed and the range"),
    (1.5, TypeError, "float", "a float seed (1.5)", "TypeError: never truncated"),
    (3.0, TypeError, "float", "an integral float seed (3.0)", "TypeError: never truncated"),
    (True, TypeError, "bool", "a bool seed", "TypeError"),
    ("7", TypeError, "str", "a string seed", "TypeError"),
]


def test_seeds():
    assert check_seed(0) == 0 and check_seed(2 ** 64 - 1) == 2 ** 64 - 1
    assert check_seed(np.uint64(2 ** 63)) == 2 ** 63 and isinstance(check_seed(np.int32(5)), int)
    torch.Generator().manual_seed(check_seed(2 ** 64 - 1))  # the whole range is what torch accepts
    for value, exc, needle, _, _ in _SEEDS:
        with pytest.raises(exc, match=needle):
            check_seed(value, "seed")
    with pytest.raises(ValueError, match="--seed"):
        check_seed(2 ** 64, "--seed")


def test_numbers():
    assert check_int(3, "n", 1, 5) == 3 and check_float(2, "x", 0, 3) == 2.0
    for bad, exc in ((3.0, TypeError), (True, TypeError), (0, ValueError), (6, ValueError)):
        with pytest.raises(exc, match="n: expected an int in \\[1, 5\\]"):
            check_int(bad, "n", 1, 5)
    for bad, exc in ((math.nan, ValueError), (math.inf, ValueError), (-1, ValueError), ("1", TypeError)):
        with pytest.raises(exc, match="x:"):
            check_float(bad, "x", 0)


# ============================================================================ arrays
def test_check_tensor_and_images():
    x = torch.rand(2, 3, 12, 12)
    assert checks.check_images(x, "images") is not None
    assert checks.check_images(x * (1 + 5e-4), "images").shape == x.shape  # float noise: inside the tolerance
    with pytest.raises(ValueError, match="images: values must lie in \\[0.0, 1.0\\]"):
        checks.check_images(x * 255, "images")
    with pytest.raises(ValueError, match="NaN"):
        checks.check_images(torch.full((1, 3, 4, 4), math.nan), "images")
    with pytest.raises(TypeError, match="real"):
        checks.check_images(torch.zeros(1, 3, 4, 4, dtype=torch.complex64), "images")
    with pytest.raises(ValueError, match="dimension 2 must be >= 11"):
        checks.check_images(torch.rand(1, 3, 8, 8), "images", min_size=11)
    with pytest.raises(TypeError, match="numpy"):
        checks.check_tensor([1, 2], "v", allow_numpy=True)
    assert checks.check_tensor(np.zeros((2, 3)), "v", allow_numpy=True).shape == (2, 3)
    with pytest.raises(TypeError, match="numeric"):
        checks.check_tensor(np.array(["a"]), "v", allow_numpy=True)
    with pytest.raises(ValueError, match="must be finite"):
        checks.check_tensor(torch.tensor([1.0, math.inf]), "v", finite=True)
    with pytest.raises(ValueError, match="must be finite"):
        checks.check_tensor(torch.tensor([complex(1, math.nan)]), "v", finite=True)


_EDGE = [  # (kwargs, exception, needle, kind, outcome)
    (dict(latents=torch.full((1, 4, 4, 4), math.nan)), ValueError, "latents: must be finite", "NaN latents",
     "ValueError naming `latents`"),
    (dict(latents=torch.full((1, 4, 4, 4), math.inf)), ValueError, "latents: must be finite", "inf latents",
     "ValueError naming `latents`"),
    (dict(latents=torch.zeros(1, 4, 4, 4, dtype=torch.float64)), TypeError, "latents: expected dtype torch.float32",
     "float64 latents", "TypeError naming `latents` and the denoiser's dtype (never converted silently)"),
    (dict(latents=torch.zeros(1, 4, 4, 4, dtype=torch.int64)), TypeError, "latents: expected a floating",
     "integer latents", "TypeError naming `latents`"),
    (dict(latents=np.zeros((1, 4, 4, 4), np.float32)), TypeError, "latents: expected a torch.Tensor",
     "numpy latents", "TypeError naming `latents`"),
    (dict(height=0), ValueError, "height: expected an int >= 1, got 0", "`height=0`",
     "ValueError naming `height` (not replaced by the default)"),
    (dict(width=0), ValueError, "width: expected an int >= 1, got 0", "`width=0`", "ValueError naming `width`"),
    (dict(height=-32), ValueError, "height", "negative `height`", "ValueError naming `height`"),
    (dict(height=32.0), TypeError, "height", "float `height=32.0`", "TypeError naming `height`"),
]


@pytest.mark.parametrize("kwargs,exc,needle", [c[:3] for c in _EDGE], ids=[c[3] for c in _EDGE])
def test_edge_rejects_bad_arrays_and_sizes(micro_pipe, kwargs, exc, needle):
    from splitldm.pipeline.split import SplitPipeline

    split = SplitPipeline(micro_pipe, split_step=1)
    with pytest.raises(exc, match=needle):
        split.edge("a red circle", num_inference_steps=2, **kwargs)
    # the same call with good inputs works (so the checks are not over-eager)
    good = split.edge("a red circle", num_inference_steps=2, latents=torch.zeros(1, 4, 4, 4), height=32, width=32)
    assert torch.isfinite(good.tensors["latents"]).all()


_CHANNEL = [  # (what, exception, needle, entry, kind, outcome)
    ("nan_z", ValueError, "z: must be finite", "`AWGN(...)(z)` (every channel)", "NaN symbols",
     "ValueError naming `z`"),
    ("inf_y", ValueError, "y: must be finite", "`Channel.equalize(y, state)`", "inf received symbols",
     "ValueError naming `y`"),
    ("nan_payload", ValueError, "payload.tensors\\['x'\\]: must be finite", "`Link([..., channel])(payload)`",
     "NaN in a payload's complex tensor", "ValueError naming the tensor"),
    ("float_seed", TypeError, "seed", "`RayleighBlockFading(seed=...)` (every channel)", "float seed 1.5",
     "TypeError naming `seed` (never truncated)"),
    ("big_seed", ValueError, "seed", "`AWGN(seed=...)` (every channel)", "seed 2**64",
     "ValueError naming `seed` and the range"),
]


@pytest.mark.parametrize("what,exc,needle", [c[:3] for c in _CHANNEL], ids=[c[0] for c in _CHANNEL])
def test_channels_reject_non_finite_symbols_and_bad_seeds(what, exc, needle):
    from splitldm.link.channels import AWGN, RayleighBlockFading
    from splitldm.link.payload import Payload
    from splitldm.link.stack import Link

    z = torch.ones(2, 8, dtype=torch.complex64)
    with pytest.raises(exc, match=needle):
        if what == "nan_z":
            bad = z.clone()
            bad[1, 3] = complex(math.nan, 0.0)
            AWGN(snr_db=5)(bad)
        elif what == "inf_y":
            ch = AWGN(snr_db=5, csi="mmse")
            ch.equalize(torch.full_like(z, complex(math.inf, 0)), ch.sample_state(2, 8, generator=torch.Generator()))
        elif what == "nan_payload":
            payload = Payload(tensors={"x": z * math.nan}, primary=["x"])
            Link([AWGN(snr_db=5)])(payload, generator=torch.Generator().manual_seed(0))
        elif what == "float_seed":
            RayleighBlockFading(snr_db=5, seed=1.5)
        else:
            AWGN(snr_db=5, seed=2 ** 64)
    assert AWGN(snr_db=5, seed=2 ** 64 - 1)(z).shape == z.shape


# ============================================================================ folders and configs
def _codec(tmp: Path) -> Path:
    from splitldm.link.codec import SeedCodec

    return SeedCodec(hidden_channels=8, num_blocks=1).save_pretrained(tmp / "m")


def _bank(tmp: Path) -> Path:
    from splitldm.link.codec import SeedCodec
    from splitldm.link.codec_bank import SeedCodecBank

    return SeedCodecBank({"latents": SeedCodec(hidden_channels=8, num_blocks=1)}).save_pretrained(tmp / "m")


def _classifier(tmp: Path) -> Path:
    from splitldm.eval.metrics import AttributeClassifier

    return AttributeClassifier(width=8, feature_dim=4).save_pretrained(tmp / "m")


def _decoder(tmp: Path) -> Path:
    from splitldm.pipeline.merge_decoder import MergeAwareDecoder

    return MergeAwareDecoder(block_out_channels=(8,), norm_num_groups=4).save_pretrained(tmp / "m")


def _policy(tmp: Path) -> Path:
    from splitldm.rl.agents.ppo import PPO

    return PPO(3, 2).save_pretrained(tmp / "m")


def _pipeline(tmp: Path) -> Path:
    from splitldm.zoo import checkpoints_dir

    folder = tmp / "m"
    shutil.copytree(checkpoints_dir() / "tiny", folder)
    return folder


def _load(name: str, folder: Path):
    if name == "SeedCodec":
        from splitldm.link.codec import SeedCodec as cls
    elif name == "SeedCodecBank":
        from splitldm.link.codec_bank import SeedCodecBank as cls
    elif name == "AttributeClassifier":
        from splitldm.eval.metrics import AttributeClassifier as cls
    elif name == "MergeAwareDecoder":
        from splitldm.pipeline.merge_decoder import MergeAwareDecoder as cls
    elif name == "PPO":
        from splitldm.rl.agents.ppo import PPO as cls
    else:
        from splitldm.pipeline.models import load_pipeline

        return load_pipeline(folder)
    return cls.from_pretrained(folder)


#: loader -> (folder builder, its config file, entry-point label)
_LOADERS = {
    "SeedCodec": (_codec, "config.json", "`SeedCodec.from_pretrained`"),
    "SeedCodecBank": (_bank, "config.json", "`SeedCodecBank.from_pretrained`"),
    "AttributeClassifier": (_classifier, "config.json", "`AttributeClassifier.from_pretrained`"),
    "MergeAwareDecoder": (_decoder, "config.json", "`MergeAwareDecoder.from_pretrained`"),
    "PPO": (_policy, "config.json", "`PPO.from_pretrained` (every policy)"),
    "pipeline": (_pipeline, "unet/config.json", "`load_pipeline(folder)`"),
}

#: (loader, config file or None for the loader's, key path, value, text of the error, kind of bad input)
_ABSURD = [
    ("SeedCodec", None, ["hidden_channels"], 10 ** 9, "hidden_channels", "a width of 10**9"),
    ("SeedCodec", None, ["num_blocks"], 10 ** 6, "num_blocks", "a million blocks"),
    ("SeedCodec", None, ["in_channels"], 10 ** 6, "in_channels", "a million channels"),
    ("SeedCodec", None, ["rho"], "0.125", "rho", "wrong type (`rho` a string)"),
    ("SeedCodec", None, ["sample_size"], [8, 8, 8], "sample_size", "wrong shape (`sample_size` of 3 ints)"),
    ("SeedCodecBank", None, ["codecs", 0, 1, "hidden_channels"], 10 ** 9, "hidden_channels",
     "a width of 10**9 in a nested codec config"),
    ("SeedCodecBank", None, ["codecs"], [["x", {}]] * 2000, "codecs", "2000 codecs"),
    ("AttributeClassifier", None, ["width"], 10 ** 9, "width", "a width of 10**9"),
    ("AttributeClassifier", None, ["feature_dim"], 10 ** 9, "feature_dim", "a feature size of 10**9"),
    ("AttributeClassifier", None, ["width"], "32", "width", "wrong type (`width` a string)"),
    ("MergeAwareDecoder", None, ["block_out_channels"], [10 ** 9], "block_out_channels", "a width of 10**9"),
    ("MergeAwareDecoder", None, ["layers_per_block"], 10 ** 6, "layers_per_block", "a million blocks"),
    ("MergeAwareDecoder", None, ["up_block_types"], ["UpDecoderBlock2D"] * 1000, "up_block_types",
     "a thousand up blocks"),
    ("MergeAwareDecoder", None, ["latent_channels"], 10 ** 6, "latent_channels", "a million channels"),
    ("PPO", None, ["config", "hidden"], 10 ** 9, "hidden", "a hidden width of 10**9 (nested)"),
    ("PPO", None, ["obs_dim"], 10 ** 9, "obs_dim", "an observation size of 10**9"),
    ("PPO", None, ["obs_dim"], 3.5, "obs_dim", "wrong type (float `obs_dim`)"),
    ("pipeline", None, ["block_out_channels"], [10 ** 9, 64, 64], "block_out_channels", "a UNet width of 10**9"),
    ("pipeline", None, ["layers_per_block"], 10 ** 6, "layers_per_block", "a million UNet blocks"),
    ("pipeline", None, ["in_channels"], 10 ** 6, "in_channels", "a million UNet input channels"),
    ("pipeline", None, ["down_block_types"], ["DownBlock2D"] * 5000, "down_block_types", "5000 down blocks"),
    ("pipeline", "text_encoder/config.json", ["num_hidden_layers"], 10 ** 6, "num_hidden_layers",
     "a million text-encoder layers"),
    ("pipeline", "text_encoder/config.json", ["vocab_size"], 10 ** 12, "vocab_size", "a vocabulary of 10**12"),
    ("pipeline", "vae/config.json", ["latent_channels"], 10 ** 6, "latent_channels", "a million VAE latent channels"),
    ("pipeline", "vae/config.json", ["block_out_channels"], "wide", "block_out_channels",
     "wrong type (VAE `block_out_channels` a string)"),
]


def _set(cfg, path, value):
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@pytest.mark.parametrize("loader,file,path,value,needle", [c[:5] for c in _ABSURD], ids=[f"{c[0]}: {c[5]}" for c in _ABSURD])
def test_absurd_sizes_and_wrong_types_are_refused_before_allocation(tmp_path, monkeypatch, loader, file, path,
                                                                     value, needle):
    import torch.nn as nn

    build, default_file, _ = _LOADERS[loader]
    folder = build(tmp_path)
    cfg_file = folder / (file or default_file)
    cfg = json.loads(cfg_file.read_text())
    _set(cfg, path, value)
    cfg_file.write_text(json.dumps(cfg))

    def no_allocation(*args, **kwargs):  # nothing may be built from the unchecked config
        raise AssertionError("a layer was allocated before the config was checked")

    monkeypatch.setattr(nn.Conv2d, "__init__", no_allocation)
    monkeypatch.setattr(nn.Linear, "__init__", no_allocation)
    monkeypatch.setattr(nn.Embedding, "__init__", no_allocation)
    with pytest.raises(ValueError, match=f"{needle}.*must be"):
        _load(loader, folder)


#: (kind of bad file, writer(cfg_file, folder, tmp), exception, text of the error, outcome)
def _not_json(f, d, t):
    f.write_text("{ nope")


def _a_list(f, d, t):
    f.write_text("[1, 2, 3]")


def _nan(f, d, t):
    f.write_text(f.read_text().replace("{", '{"not_a_number": NaN, ', 1))


def _huge(f, d, t):
    f.write_text(f.read_text() + " " * (2 << 20))


def _deep(f, d, t):
    f.write_text('{"x": ' + "[" * 5000 + "]" * 5000 + "}")


def _binary(f, d, t):
    f.write_bytes(b"\xff\xfe\x00\x01" * 16)


def _link_out(f, d, t):
    outside = t / "outside.json"
    outside.write_text(f.read_text())
    f.unlink()
    f.symlink_to(outside)


def _weights_link_out(f, d, t):
    weights = sorted(p for p in d.rglob("*.safetensors") if "unet" in p.parts or p.parent == d)[0]
    outside = t / "outside.safetensors"
    shutil.copy(weights, outside)
    weights.unlink()
    weights.symlink_to(outside)


def _a_fifo(f, d, t):
    import os

    f.unlink()
    os.mkfifo(f)


_FILES = [
    ("config that is not JSON", _not_json, ValueError, "corrupt", "ValueError (corrupt config)"),
    ("config that is a JSON list", _a_list, ValueError, "corrupt", "ValueError (corrupt config)"),
    ("config of binary garbage", _binary, ValueError, "corrupt", "ValueError (corrupt config)"),
    ("config nested 5000 deep", _deep, ValueError, "corrupt|deeper", "ValueError (corrupt config)"),
    ("config of 2 MiB", _huge, ValueError, "at most", "ValueError, refused unread"),
    ("config symlinked out of the folder", _link_out, ValueError, "outside", "ValueError (link outside the folder)"),
    ("weights symlinked out of the folder", _weights_link_out, ValueError, "outside",
     "ValueError (link outside the folder)"),
    ("config that is a FIFO (would block a reader)", _a_fifo, FileNotFoundError, "regular file|has no|missing",
     "FileNotFoundError, nothing hangs"),
]
_STRICT_NAN = ["SeedCodec", "SeedCodecBank", "AttributeClassifier", "MergeAwareDecoder", "PPO"]


@pytest.mark.parametrize("loader", list(_LOADERS))
@pytest.mark.parametrize("kind,write,exc,needle", [c[:4] for c in _FILES], ids=[c[0] for c in _FILES])
def test_bad_files_are_refused_by_every_loader(tmp_path, loader, kind, write, exc, needle):
    build, cfg_name, _ = _LOADERS[loader]
    folder = build(tmp_path)
    write(folder / cfg_name, folder, tmp_path)
    with pytest.raises(exc, match=needle):
        _load(loader, folder)


@pytest.mark.parametrize("loader", _STRICT_NAN)
def test_nan_in_our_own_configs_is_refused(tmp_path, loader):
    build, cfg_name, _ = _LOADERS[loader]
    folder = build(tmp_path)
    _nan(folder / cfg_name, folder, tmp_path)
    with pytest.raises(ValueError, match="NaN is not allowed"):
        _load(loader, folder)


def test_pipeline_folder_without_tokenizer_and_model_index_symlink(tmp_path):
    folder = _pipeline(tmp_path)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        _load("pipeline", folder)
    folder = _pipeline(tmp_path / "b")
    outside = tmp_path / "elsewhere"
    shutil.move(str(folder / "text_encoder"), str(outside))
    (folder / "text_encoder").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        _load("pipeline", folder)
    folder = _pipeline(tmp_path / "c")
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="corrupt"):
        _load("pipeline", folder)


def test_shipped_and_real_model_configs_fit_the_bounds():
    """The bounds are generous: every shipped folder and the real SD / SDXL / SD3 / SD3.5 / PixArt / Flux
    architectures (their component configs) pass."""
    from splitldm.pipeline.dit_specs import DIT_SPECS
    from splitldm.pipeline.models import SPECS, build_unet
    from splitldm.zoo import checkpoints_dir

    for name in ("tiny", "tiny-lcm"):
        checks.check_pipeline_folder(checkpoints_dir() / name)
    for name in SPECS:
        cfg = json.loads(json.dumps(dict(build_unet(name, device="meta").config), default=list))
        checks.check_config(cfg, checks.DIFFUSERS_BOUNDS, name)
    for name, spec in DIT_SPECS.items():
        for part in (spec.transformer, spec.vae, *[c for _, c, _ in spec.text_encoders]):
            checks.check_config(json.loads(json.dumps(part, default=list)), checks.DIFFUSERS_BOUNDS, name)


def test_hub_snapshot_links_into_its_own_cache_are_allowed(tmp_path):
    repo = tmp_path / "models--someone--codec"
    blob = repo / "blobs" / "abc"
    blob.parent.mkdir(parents=True)
    blob.write_text('{"hidden_channels": 8}')
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(Path("../../blobs/abc"))
    assert read_config(snap, "config.json", {"hidden_channels": Bound("int", 1, 64)}) == {"hidden_channels": 8}
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").symlink_to(blob)
    with pytest.raises(ValueError, match="outside"):
        read_config(tmp_path / "plain", "config.json")
    with pytest.raises(ValueError, match="outside"):
        read_config(tmp_path / "plain", "../config.json")


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "a" / "b.png", "--out") == tmp_path / "a" / "b.png"
    assert (tmp_path / "a").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out: .*is a file"):
        check_output_path(tmp_path / "file" / "b.png", "--out")
    with pytest.raises(ValueError, match="--out: .*is a file"):
        check_output_path(tmp_path / "file" / "sub", "--out", folder=True)
    with pytest.raises(ValueError, match="is a folder"):
        check_output_path(tmp_path / "a", "--out")
    with pytest.raises(TypeError, match="--out"):
        check_output_path(3, "--out")


# ============================================================================ property tests
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=30)
_keys = st.sampled_from(["in_channels", "rho", "hidden_channels", "num_blocks", "sample_size", "condition",
                         "snr_range_db", "in_mean", "codecs", "other"])
_configs = st.dictionaries(_keys, _json, max_size=6)


def _fits(cfg) -> bool:
    from splitldm.link.codec import CONFIG_BOUNDS

    try:
        checks.check_config(cfg, CONFIG_BOUNDS, "x")
        return True
    except ValueError:
        return False


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=_configs | _json)
def test_read_config_on_random_json_returns_it_or_raises_value_error(tmp_path_factory, cfg):
    from splitldm.link.codec import CONFIG_BOUNDS

    folder = tmp_path_factory.mktemp("cfg")
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        got = read_config(folder, "config.json", CONFIG_BOUNDS)
    except ValueError as exc:
        assert str(exc).startswith("pretrained_model_name_or_path: ")
        assert not (isinstance(cfg, dict) and _fits(cfg))
        return
    assert got == cfg and isinstance(cfg, dict)
    for key, bound in CONFIG_BOUNDS.items():  # what passes is inside the bounds
        if key in got and got[key] is not None and bound.kind == "int":
            assert bound.low <= got[key] <= bound.high


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_read_config_on_random_bytes_never_crashes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("raw")
    (folder / "config.json").write_bytes(data)
    try:
        got = read_config(folder, "config.json")
    except ValueError as exc:
        assert "corrupt" in str(exc)
    else:
        assert isinstance(got, dict)


# ============================================================================ the docs table
#: (entry point, kind of bad input, what the user gets): collected into docs/guides/bad-inputs.md.
CASES = (
    [("`splitldm.checks.check_seed` (every seed argument)", c[3], c[4]) for c in _SEEDS]
    + [("`SplitPipeline.edge`", c[3], c[4]) for c in _EDGE]
    + [(c[3], c[4], c[5]) for c in _CHANNEL]
    + [(_LOADERS[c[0]][2], f"{c[5]} in `{c[1] or _LOADERS[c[0]][1]}`",
        f"ValueError naming `{c[4]}` and its bound, before any layer is allocated") for c in _ABSURD]
    + [(label, kind, outcome) for _, (_, _, label) in _LOADERS.items() for kind, _, _, _, outcome in _FILES]
    + [(_LOADERS[name][2], "NaN in `config.json`", "ValueError (strict JSON)") for name in _STRICT_NAN]
    + [("`load_pipeline(folder)`", "no tokenizer folder", "FileNotFoundError naming the tokenizer"),
       ("`load_pipeline(folder)`", "a component folder symlinked out of the folder", "ValueError (link outside)"),
       ("`load_pipeline(folder)`", "`model_index.json` that is a list", "ValueError (corrupt config)"),
       ("`splitldm.checks.read_config`", "a symlink out of a plain folder, or `../`", "ValueError (outside)"),
       ("`splitldm.checks.read_config`", "random JSON (Hypothesis, 80 examples)",
        "the object, or ValueError naming the argument; nothing else"),
       ("`splitldm.checks.read_config`", "random bytes (Hypothesis, 80 examples)", "ValueError (corrupt config)"),
       ("`splitldm.checks.check_output_path` (every `--out`)", "a path under a file, a folder where a file goes",
        "ValueError naming the option, before the work")]
)
