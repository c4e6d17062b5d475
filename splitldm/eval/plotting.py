"""The one plotting helper of the library: figures through matplotlib's object API.

Library code never touches pyplot's global state and never switches the backend (a notebook user's
backend stays what it was): a figure is a `matplotlib.figure.Figure`, drawn by its own Agg canvas
when saved, and garbage-collected like any object (nothing to ``plt.close``).

    from splitldm.eval.plotting import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(8, 3))
    axes[0][0].plot([0, 1], [0, 1])
    save_figure(fig, "out/curve.png")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_figure"]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
               squeeze: bool = False, **subplots_kw: Any):
    """A new `matplotlib.figure.Figure` with a grid of axes (no pyplot, no backend switch).

    Args:
        nrows, ncols: grid of axes (each >= 1).
        figsize: (width, height) in inches; matplotlib's default when None.
        squeeze: as in `matplotlib.figure.Figure.subplots`; False (the default) always gives a
            2-D array ``axes[row][col]``.
        subplots_kw: further keyword arguments of `Figure.subplots` (``sharex``, ``gridspec_kw``, ...).

    Returns:
        ``(fig, axes)``.
    """
    from matplotlib.figure import Figure

    for name, value in (("nrows", nrows), ("ncols", ncols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **subplots_kw)
    return fig, axes


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110, tight: bool = True) -> Path:
    """Write ``fig`` (a `matplotlib.figure.Figure`) to ``path``; the format follows the suffix (``.png``,
    ``.pdf``, ``.svg``). Parent folders are created. ``tight`` applies ``fig.tight_layout()`` first.

    Returns the path written.
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig: expected a matplotlib.figure.Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.suffix:
        raise ValueError(f"path: {path} has no suffix; the suffix picks the format (.png, .pdf, .svg)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
