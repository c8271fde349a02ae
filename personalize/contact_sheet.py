"""One identity's contact sheet: its reference photos, then one row per prompt with that prompt's images.

    sheet = contact_sheet(photos, [(prompt, images), ...], title="person_a")   # a PIL image
    save_contact_sheet(path, photos, rows, title=...)                            # PNG, written atomically

Every image is shown at `cell` pixels (nearest-neighbour upscaling, so 64 x 64 world images stay crisp);
the prompt is written above its row, wrapped to the sheet's width. The same sheet is drawn by the main
job's demo and by the web page (personalize/app.py).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PAD = 6


def _fit(image: Image.Image, cell: int) -> Image.Image:
    image = image.convert("RGB")
    w, h = image.size
    scale = cell / max(w, h)
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    tile = Image.new("RGB", (cell, cell), BACKGROUND)
    tile.paste(image, ((cell - image.width) // 2, (cell - image.height) // 2))
    return tile


def contact_sheet(photos: Sequence[Image.Image], rows: Sequence[tuple[str, Sequence[Image.Image]]], *,
                  title: str = "", cell: int = 128) -> Image.Image:
    """photos: the reference photos (one row, labelled "reference photos"); rows: (prompt, images) in
    order. Returns an RGB image as wide as the longest row."""
    font = ImageFont.load_default()
    line_h = 14
    groups = [("reference photos" + (f" - {title}" if title else ""), list(photos))]
    groups += [(prompt, list(images)) for prompt, images in rows]
    columns = max([len(images) for _, images in groups] + [1])
    width = PAD + columns * (cell + PAD)
    chars = max(20, (width - 2 * PAD) // 6)
    labels = [textwrap.wrap(text, chars) or [""] for text, _ in groups]
    height = PAD + sum(len(lines) * line_h + cell + 2 * PAD for lines in labels)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = PAD
    for (_, images), lines in zip(groups, labels):
        for line in lines:
            draw.text((PAD, y), line, fill=INK, font=font)
            y += line_h
        y += PAD // 2
        for k, image in enumerate(images):
            sheet.paste(_fit(image, cell), (PAD + k * (cell + PAD), y))
        y += cell + PAD + PAD // 2
    return sheet


def save_contact_sheet(path: str | Path, photos: Sequence[Image.Image],
                       rows: Sequence[tuple[str, Sequence[Image.Image]]], *, title: str = "",
                       cell: int = 128) -> Path:
    """contact_sheet(...) written to `path` as PNG (temporary file, then rename). Returns the path."""
    from models.atomic import atomic_write

    path = Path(path)
    sheet = contact_sheet(photos, rows, title=title, cell=cell)
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path
