"""Draw the book's logo and favicon: one 4x4 DCT basis block with a single anomalous cell.

Run from anywhere (``python tools/make_logo.py``); it rewrites
``logo.svg`` and ``favicon.png`` in ``book/_static``. The picture is the book in one glance: a
patch of smooth, frequency-structured texture (a 2-D DCT basis function) and the one cell
that does not fit it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

STATIC = Path(__file__).resolve().parents[1] / "book" / "_static"
SIDE = 4  # cells per side of the block
FREQUENCY = (1, 2)  # the (vertical, horizontal) DCT frequency drawn
DEFECT = (2, 1)  # (row, column) of the cell that breaks the pattern


def dct_basis(side: int, frequency: tuple[int, int]) -> np.ndarray:
    """The 2-D DCT-II basis function ``cos(pi (2i+1) u / 2n) cos(pi (2j+1) v / 2n)``, shape ``(n, n)``."""
    index = np.arange(side)
    u, v = frequency
    rows = np.cos(np.pi * (2 * index + 1) * u / (2 * side))
    columns = np.cos(np.pi * (2 * index + 1) * v / (2 * side))
    return np.outer(rows, columns)


def draw(size_inches: float) -> plt.Figure:
    """The logo on a transparent square canvas."""
    figure = plt.figure(figsize=(size_inches, size_inches))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.axis("off")
    axes.add_patch(FancyBboxPatch((0.04, 0.04), 0.92, 0.92, boxstyle="round,pad=0,rounding_size=0.16",
                                  facecolor="#17324d", edgecolor="none"))
    basis = dct_basis(SIDE, FREQUENCY)
    cells = plt.get_cmap("Blues")(0.25 + 0.5 * (basis - basis.min()) / np.ptp(basis))
    cell, gap = 0.18, 0.025
    origin = (1 - SIDE * cell - (SIDE - 1) * gap) / 2  # centre the block on the canvas
    for row in range(SIDE):
        for column in range(SIDE):
            colour = "#f28e2b" if (row, column) == DEFECT else cells[row, column]
            x = origin + column * (cell + gap)
            y = 1 - origin - (row + 1) * cell - row * gap
            axes.add_patch(FancyBboxPatch((x, y), cell, cell, boxstyle="round,pad=0,rounding_size=0.03",
                                          facecolor=colour, edgecolor="none"))
    return figure


def main() -> None:
    """Write ``logo.svg`` (the sidebar) and ``favicon.png`` (the browser tab)."""
    logo = draw(1.0)
    logo.savefig(STATIC / "logo.svg", transparent=True, metadata={"Date": None})
    plt.close(logo)
    icon = draw(0.64)
    icon.savefig(STATIC / "favicon.png", dpi=100, transparent=True)
    plt.close(icon)


if __name__ == "__main__":
    main()
