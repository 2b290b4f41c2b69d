"""Reading numbers back out of rendered heatmaps, for the image tests."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from PIL import Image

EIFFEL_TOY = {
    "clean_prompt": "w1 w2 w3 w1 w2",
    "corrupted_prompt": "w1 w2 w3 w4 w2",
    "answer": " w3",
    "wrong_answer": " w4",
}


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=float) / 255.0


def read_cells(pixels: np.ndarray, box: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
    """The colour of every cell, sampled near each cell's top-left corner (away from any cell text)."""
    left, top, right, bottom = box
    n_rows, n_cols = shape
    width, height = (right - left) / n_cols, (bottom - top) / n_rows
    colours = np.zeros((n_rows, n_cols, 3))
    for r in range(n_rows):
        for c in range(n_cols):
            x, y = int(left + (c + 0.2) * width), int(top + (r + 0.2) * height)
            colours[r, c] = pixels[y, x]
    return colours


def invert_colours(colours: np.ndarray, cmap_name: str, norm: Normalize) -> np.ndarray:
    """Each colour back to a value: the nearest entry of the colour map, through the inverse of the norm."""
    table = colormaps[cmap_name](np.linspace(0, 1, 256))[:, :3]
    distances = ((colours[..., None, :] - table) ** 2).sum(axis=-1)
    fractions = distances.argmin(axis=-1) / 255.0
    return np.asarray(norm.inverse(fractions))
