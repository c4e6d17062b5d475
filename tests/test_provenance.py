"""splitldm.eval.provenance: the provenance block every result JSON carries."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch

import splitldm
from splitldm.eval.provenance import PACKAGES, folder_sha256, provenance

KEYS = {"versions", "platform", "machine", "cpu_count", "threads", "env_threads", "git_commit",
        "git_dirty", "argv", "config", "seeds", "feature_extractor", "models"}


def test_keys_versions_and_round_trip():
    cfg = {"snr_db": [0, 5], "nested": {"r": 0.5}, "path": object()}
    p = provenance(cfg, {"sampling": 0, "channel": 1000}, "classifier", models=["tiny"])
    assert set(p) == KEYS
    assert p["versions"]["splitldm"] == splitldm.__version__
    assert p["versions"]["torch"] == metadata.version("torch")
    assert set(p["versions"]) == {"splitldm", "python", *PACKAGES}
    assert p["threads"] == torch.get_num_threads()
    assert p["seeds"] == {"sampling": 0, "channel": 1000}
    assert p["feature_extractor"] == "classifier"
    assert p["config"]["snr_db"] == [0, 5] and p["config"]["nested"] == {"r": 0.5}
    assert isinstance(p["config"]["path"], str)  # non-JSON value stored as its str
    assert p["models"]["tiny"]["sha256"] == folder_sha256(splitldm.zoo.resolve("tiny"))
    assert len(p["models"]["tiny"]["sha256"]) == 64
    assert json.loads(json.dumps(p)) == p  # JSON-ready as is
    # this test runs from the repository checkout: the commit is a 40-hex sha
    assert p["git_commit"] is None or len(p["git_commit"]) == 40


def test_folder_hash_changes_with_content(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x00\x01")
    h1 = folder_sha256(tmp_path)
    assert folder_sha256(tmp_path) == h1
    (tmp_path / "a.bin").write_bytes(b"\x00\x02")
    assert folder_sha256(tmp_path) != h1
    with pytest.raises(FileNotFoundError, match="path"):
        folder_sha256(tmp_path / "missing")


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"config": [1]}, TypeError, "config"),
    ({"seeds": [0]}, TypeError, "seeds"),
    ({"seeds": {"channel": -1}}, ValueError, "seeds"),
    ({"seeds": {"channel": True}}, ValueError, "seeds"),
    ({"extractor": 3}, TypeError, "extractor"),
    ({"models": "tiny"}, TypeError, "models"),
    ({"models": ["no-such-model"]}, ValueError, "name"),
])
def test_bad_inputs(kwargs, exc, name):
    args = {"config": {}, "seeds": {"sampling": 0}, **kwargs}
    with pytest.raises(exc, match=name):
        provenance(**args)
