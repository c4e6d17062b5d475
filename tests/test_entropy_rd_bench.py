"""bench/entropy_rd.py: the operational R-D curve (upper concave hull) and bits at equal PSNR."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("entropy_rd", Path(__file__).resolve().parents[1] / "bench" / "entropy_rd.py")
rd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rd)


def test_hull_drops_dominated_and_under_chord_levels():
    # (bits, PSNR): (60, 9) is under the chord (40, 8) -> (100, 12); (120, 11.5) is dominated by (100, 12)
    bits, psnr = [20, 40, 60, 100, 120], [5.0, 8.0, 9.0, 12.0, 11.5]
    b, p = rd.upper_hull(bits, psnr)
    assert b.tolist() == [20, 40, 100] and p.tolist() == [5.0, 8.0, 12.0]
    curve = {"bits": bits, "psnr": psnr}
    assert rd.bits_at(curve, 10.0) == pytest.approx(40 + (10 - 8) / (12 - 8) * 60)
    assert rd.bits_at(curve, 5.0) == 20.0 and rd.bits_at(curve, 12.0) == 100.0
    assert rd.bits_at(curve, 4.9) is None and rd.bits_at(curve, 12.1) is None
    # a model 10 bits cheaper everywhere saves 10 bits at every PSNR inside both curves
    cheaper = {"bits": [x - 10 for x in bits], "psnr": psnr}
    for p_ in (5.0, 7.0, 11.0):
        assert rd.bits_at(curve, p_) - rd.bits_at(cheaper, p_) == pytest.approx(10.0)
    assert np.all(np.diff(rd.upper_hull(cheaper["bits"], psnr)[0]) > 0)
