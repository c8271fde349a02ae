"""encoder.photos: listing a photo folder and decoding any photo to RGB uint8."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from encoder.photos import IMAGE_SUFFIXES, PhotoError, list_photos, load_rgb, scan_folder


def _pattern(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_with_orientation(arr: np.ndarray, path, orientation: int, **kw):
    im = Image.fromarray(np.ascontiguousarray(arr))
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, **kw)


# ------------------------------------------------------------------------------------ listing
def test_image_suffixes_are_every_format_pillow_reads():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_SUFFIXES
    assert ".pdf" not in IMAGE_SUFFIXES  # Pillow writes PDFs but does not read them


def test_list_photos_filters_and_sorts(tmp_path):
    img = Image.fromarray(_pattern())
    for name in ["b.jpeg", "a.JPG", "c.png", "d.WebP", "e.bmp", ".hidden.jpg", "._a.jpg"]:
        img.save(tmp_path / name, format="PNG")  # content does not matter for listing
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "raw.gif").write_bytes(b"GIF89a")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image-like name
    (tmp_path / "sub.jpg" / "inner.jpg").write_bytes(b"x")
    names = [p.name for p in list_photos(tmp_path)]
    assert names == sorted(["a.JPG", "b.jpeg", "c.png", "d.WebP", "e.bmp", "raw.gif"])


def test_scan_folder_gives_a_reason_for_every_entry_not_used(tmp_path):
    """Nothing in a photo folder is dropped silently: each entry is a candidate or has a reason."""
    img = Image.fromarray(_pattern())
    img.save(tmp_path / "a.jpg")
    img.save(tmp_path / "no_suffix", format="PNG")  # recognised by its content
    img.save(tmp_path / "scan.TIFF")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "more").mkdir()
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "linked.jpg").symlink_to(tmp_path / "a.jpg")
    photos, skipped = scan_folder(tmp_path)
    assert [p.name for p in photos] == ["a.jpg", "linked.jpg", "no_suffix", "scan.TIFF"]
    reasons = {p.name: r for p, r in skipped}
    assert reasons == {".DS_Store": "hidden file", "more": "a folder (photos in sub-folders are not used)",
                       "gone.jpg": f"broken link (its target {tmp_path / 'deleted.jpg'} does not exist)",
                       "notes.txt": "not an image file"}
    assert len(photos) + len(skipped) == len(list(tmp_path.iterdir()))


def test_gif_photos_are_read(tmp_path):
    """A GIF (one frame or animated) is a photo like any other: its first frame, in RGB."""
    a = _pattern(40, 50)
    Image.fromarray(a).save(tmp_path / "still.gif")
    frames = [Image.fromarray(_pattern(40, 50, seed=s)).convert("P") for s in (1, 2)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    still = load_rgb(tmp_path / "still.gif")
    assert still.shape == (40, 50, 3) and still.dtype == np.uint8
    assert np.abs(still.astype(int) - a).mean() < 40  # a palette of 256 colours: close, not equal
    np.testing.assert_array_equal(load_rgb(tmp_path / "moving.gif"), np.asarray(frames[0].convert("RGB")))


def test_list_photos_empty_and_missing(tmp_path):
    assert list_photos(tmp_path) == []
    with pytest.raises(PhotoError) as e:
        list_photos(tmp_path / "nope")
    assert e.value.reason == "photo folder not found" and "nope" in str(e.value)
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(PhotoError, match="not a folder"):
        list_photos(f)


# ------------------------------------------------------------------------------ colour modes
def test_rgb_png_roundtrip_exact(tmp_path):
    a = _pattern()
    Image.fromarray(a).save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)


def test_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (200, 10, 30)
    rgba[:, :10, 3] = 0  # transparent
    rgba[:, 10:20, 3] = 255  # opaque
    rgba[:, 20:, 3] = 128  # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.shape == (32, 32, 3)
    assert (out[:, :10] == 255).all()
    assert (out[:, 10:20] == (200, 10, 30)).all()
    half = out[0, 25].astype(int)
    expected = np.array([200, 10, 30]) * 128 / 255 + 255 * 127 / 255
    assert np.abs(half - expected).max() <= 2


def test_la_and_palette_transparency(tmp_path):
    la = np.zeros((20, 20, 2), np.uint8)
    la[..., 0] = 50
    la[:, 10:, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = load_rgb(tmp_path / "la.png")
    assert (out[:, :10] == 255).all() and (out[:, 10:] == 50).all()

    p = Image.new("P", (20, 20), 0)
    p.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    p.paste(1, (0, 0, 10, 20))
    p.save(tmp_path / "p.png", transparency=0)
    out = load_rgb(tmp_path / "p.png")
    assert (out[:, :10] == (255, 0, 0)).all() and (out[:, 10:] == 255).all()

    p.save(tmp_path / "p_opaque.png")
    out = load_rgb(tmp_path / "p_opaque.png")
    assert (out[:, 10:] == (0, 0, 255)).all()


def test_grayscale_and_bilevel(tmp_path):
    g = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (20, 1))
    Image.fromarray(g, "L").save(tmp_path / "g.jpg", quality=100)
    out = load_rgb(tmp_path / "g.jpg")
    assert out.shape == (20, 32, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - g).max() <= 3
    Image.fromarray(g > 127).save(tmp_path / "b.png")
    out = load_rgb(tmp_path / "b.png")
    assert set(np.unique(out)) == {0, 255}


def test_cmyk_jpeg(tmp_path):
    a = np.zeros((32, 48, 3), np.uint8)
    a[:, :16] = (220, 30, 40)
    a[:, 16:32] = (20, 200, 60)
    a[:, 32:] = (250, 250, 250)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_rgb(tmp_path / "c.jpg")
    assert out.shape == (32, 48, 3)
    assert np.abs(out[4:-4, 4:12].astype(int) - (220, 30, 40)).max() <= 12
    assert np.abs(out[4:-4, 20:28].astype(int) - (20, 200, 60)).max() <= 12


def test_16bit_png_gray_scaled_not_clipped(tmp_path):
    g16 = np.tile((np.arange(64, dtype=np.uint32) * 1040).astype(np.uint16), (20, 1))
    g16[:, -1] = 65535
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_rgb(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], np.rint(g16 / 257.0).astype(np.uint8))
    assert out[0, -1, 0] == 255 and out[0, 32, 0] == round(32 * 1040 / 257)


def test_16bit_png_rgb(tmp_path):
    a16 = (np.random.default_rng(1).integers(0, 65536, (20, 30, 3))).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), a16[..., ::-1])  # cv2 writes BGR
    out = load_rgb(tmp_path / "c16.png")
    assert np.abs(out.astype(int) - (a16 >> 8)).max() <= 1


def test_int32_and_float_images(tmp_path):
    i32 = np.tile(np.arange(0, 40000, 1000, dtype=np.int32), (20, 1))
    Image.fromarray(i32, "I").save(tmp_path / "i.tif")
    out = load_rgb(tmp_path / "i.tif")
    np.testing.assert_array_equal(out[..., 0], np.rint(i32 / 257.0).astype(np.uint8))
    f = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (20, 1))
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    out = load_rgb(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[..., 1], np.rint(f * 255).astype(np.uint8))


@pytest.mark.parametrize("orientation,undo", [
    (2, lambda d: d[:, ::-1]), (3, lambda d: np.rot90(d, 2)),
    (6, lambda d: np.rot90(d, 1)), (8, lambda d: np.rot90(d, -1))])
def test_exif_orientation_applied(tmp_path, orientation, undo):
    shown = _pattern(24, 40)
    stored = undo(shown)  # what a camera writes so that a viewer shows `shown`
    _save_with_orientation(stored, tmp_path / "o.png", orientation)
    np.testing.assert_array_equal(load_rgb(tmp_path / "o.png"), shown)
    _save_with_orientation(stored, tmp_path / "o.jpg", orientation, quality=95)
    assert load_rgb(tmp_path / "o.jpg").shape == shown.shape


def test_webp_and_bmp(tmp_path):
    a = _pattern()
    Image.fromarray(a).save(tmp_path / "a.bmp")
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.bmp"), a)
    Image.fromarray(a).save(tmp_path / "a.webp", lossless=True)
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.webp"), a)


# ---------------------------------------------------------------------------------- failures
def _reason(path) -> str:
    with pytest.raises(PhotoError) as e:
        load_rgb(path)
    assert path.name in str(e.value)
    return e.value.reason


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_pattern(200, 200)).save(buf, "JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert _reason(p) == "truncated or corrupt image"


def test_corrupt_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_pattern(64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 8: idat + 40] = b"\x00" * 32  # garbage inside the compressed stream
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    assert _reason(p) == "truncated or corrupt image"


def test_not_an_image_empty_missing_folder(tmp_path):
    p = tmp_path / "text.jpg"
    p.write_text("this is not a photo\n")
    assert _reason(p) == "not an image file"
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert _reason(p) == "empty file (0 bytes)"
    assert _reason(tmp_path / "missing.jpg") == "file not found"
    d = tmp_path / "dir.jpg"
    d.mkdir()
    assert _reason(d) == "not a file"


def test_too_small(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    assert _reason(tmp_path / "dot.png") == "image too small (1x1)"
    Image.new("RGB", (200, 8)).save(tmp_path / "strip.png")
    assert _reason(tmp_path / "strip.png") == "image too small (200x8)"
