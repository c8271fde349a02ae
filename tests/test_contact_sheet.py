import numpy as np
from PIL import Image

from personalize.contact_sheet import contact_sheet, save_contact_sheet


def _img(v, size=64):
    return Image.fromarray(np.full((size, size, 3), v, np.uint8))


def test_sheet_layout_and_pixels(tmp_path):
    photos = [_img(10), _img(20), _img(30)]
    rows = [("a photo of a man wearing a red hat in the snow, a rather long prompt that wraps " * 2, [_img(200)] * 3),
            ("a painting of a woman", [_img(100)] * 3)]
    sheet = contact_sheet(photos, rows, title="person_0", cell=96)
    assert sheet.mode == "RGB"
    assert sheet.width == 6 + 3 * (96 + 6)
    a = np.asarray(sheet)
    # every image value is on the sheet (nearest-neighbour: flat tiles keep their value)
    for v in (10, 20, 30, 200, 100):
        assert (a == v).all(axis=-1).sum() >= 96 * 96
    path = save_contact_sheet(tmp_path / "out" / "sheet.png", photos, rows, cell=64)
    assert Image.open(path).size[0] == 6 + 3 * 70
    assert not list((tmp_path / "out").glob(".*tmp"))
