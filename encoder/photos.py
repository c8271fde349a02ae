"""Reading a person's photos: which files count as photos, and decoding one into RGB uint8.

A photo is any file Pillow can read (by suffix, or by content for other names). Every way a photo
can fail is turned into :class:`PhotoError` with a short ``reason`` that the callers record next
to the file ("not an image file", "truncated or corrupt image", ...), so one bad file never stops a
folder from being processed; `scan_folder` gives the same kind of reason for every other entry of
the folder (hidden files, sub-folders, broken links, files of other kinds), so nothing in a photo
folder is left out silently.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import UserError


def _readable_suffixes() -> frozenset[str]:
    """Every file suffix of an image format that Pillow can open (.jpg, .png, .gif, .tiff, ...)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


IMAGE_SUFFIXES = _readable_suffixes()
MIN_IMAGE_SIDE = 16  # smaller images cannot hold a usable face
_BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white


class PhotoError(UserError):
    """A photo (or photo folder) that cannot be used; ``reason`` is short and human readable."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


def _not_a_photo(p: Path) -> str | None:
    """Why the folder entry `p` is not a candidate photo, or None when it is one."""
    if p.name.startswith("."):
        return "hidden file"
    if p.is_symlink() and not p.exists():
        return f"broken link (its target {os.readlink(p)} does not exist)"
    if p.is_dir():
        return "a folder (photos in sub-folders are not used)"
    if not p.is_file():
        return "not a regular file"
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:  # another name: Pillow decides from the first bytes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p):
                return None
    except PermissionError:
        return "cannot read file (permission denied)"
    except Exception:  # noqa: BLE001 - whatever Pillow cannot identify is not a photo
        return "not an image file"


def scan_folder(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(candidate photos, [(entry, reason)] for every other entry) directly inside `folder`, by name.

    A candidate has an image suffix (IMAGE_SUFFIXES) or content Pillow identifies; whether it
    decodes is load_rgb's to say. Raises PhotoError when `folder` is missing, a file or unreadable.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise PhotoError("photo folder not found", folder)
    if not folder.is_dir():
        raise PhotoError("not a folder (expected a folder of photos)", folder)
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise PhotoError(f"cannot read folder ({e.strerror or e})", folder) from e
    photos, skipped = [], []
    for p in entries:
        reason = _not_a_photo(p)
        if reason is None:
            photos.append(p)
        else:
            skipped.append((p, reason))
    return photos, skipped


def list_photos(folder: str | os.PathLike) -> list[Path]:
    """The candidate photos directly inside `folder`, sorted by name (scan_folder without the rest)."""
    return scan_folder(folder)[0]


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel integer/float pixels of a wide mode -> uint8 with the full range kept."""
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        scaled = a / 257.0  # 0..65535 -> 0..255
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0  # normalised float image
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a  # already 8-bit values in a wide container
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = a / 257.0  # 16-bit data (older Pillow opens 16-bit PNGs as mode "I")
    else:
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL colour mode -> [H, W, 3] uint8 RGB (alpha composited over white)."""
    mode = img.mode
    if mode == "RGB":
        rgb = img
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgb = _flatten_alpha(img)
    elif mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(img), mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    else:  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX ...
        try:
            rgb = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise PhotoError(f"unsupported colour mode {mode}") from e
    a = np.asarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise PhotoError(f"unsupported colour mode {mode}")
    return np.ascontiguousarray(a)


def decode_image(source, path: str | os.PathLike | None = None) -> np.ndarray:
    """A path or binary stream -> [H, W, 3] uint8 RGB, EXIF orientation applied, any colour mode.

    Raises PhotoError with a short reason (naming `path` when given) for anything undecodable.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()  # decode now: truncation and corruption surface here
                try:
                    oriented = ImageOps.exif_transpose(img)
                except Exception:  # a broken EXIF block: keep the pixels as stored
                    oriented = img
                return to_rgb_array(oriented if oriented is not None else img)
    except PhotoError as e:
        raise PhotoError(e.reason, path) from e
    except UnidentifiedImageError as e:
        raise PhotoError("not an image file", path) from e
    except Image.DecompressionBombError as e:
        raise PhotoError("image too large (decompression bomb guard)", path) from e
    except PermissionError as e:
        raise PhotoError("cannot read file (permission denied)", path) from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        raise PhotoError("truncated or corrupt image", path) from e


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode one photo into [H, W, 3] uint8 RGB, as a viewer would show it.

    EXIF orientation is applied, every colour mode is converted (transparency over white, 16-bit and
    float images scaled to 8 bit). Raises PhotoError with a short reason for anything unusable.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise PhotoError("file not found", path)
    if not path.is_file():
        raise PhotoError("not a file", path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PhotoError(f"cannot read file ({e.strerror or e})", path) from e
    if size == 0:
        raise PhotoError("empty file (0 bytes)", path)
    rgb = decode_image(path, path)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise PhotoError(f"image too small ({w}x{h})", path)
    return rgb

