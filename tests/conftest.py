import os

# Nothing in the test suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def micro_pipe():
    """The smallest SD architecture (32 px images, 4x4x4 latents), seeded random weights (read-only)."""
    from splitldm import build_pipeline

    return build_pipeline("micro-random", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny SD architecture of the shipped model (64 px, 4x8x8 latents), seeded random weights."""
    from splitldm import build_pipeline

    return build_pipeline("tiny-random", seed=0)
