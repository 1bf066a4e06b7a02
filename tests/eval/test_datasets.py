"""Dataset readers on files the tests write in each dataset's real layout and format."""
import csv
import warnings

import numpy as np
import pytest
from PIL import Image

from mcgr.eval.datasets import DatasetError, cbis_ddsm, image_folder, inbreast, parse_inbreast_xml, synthetic
from tests.io.dicom_factory import breast_phantom as dicom_pixels
from tests.io.dicom_factory import write_dicom

# The head and ROI layout of the INbreast XML files (OsiriX "Export ROIs" plists), written by hand
# so that the parser is checked against the format, not against a writer of our own.
XML_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
\t<key>Images</key>
\t<array>
\t\t<dict>
\t\t\t<key>ImageHeight</key>
\t\t\t<integer>{h}</integer>
\t\t\t<key>ImageIndex</key>
\t\t\t<integer>0</integer>
\t\t\t<key>ImageWidth</key>
\t\t\t<integer>{w}</integer>
\t\t\t<key>NumberOfROIs</key>
\t\t\t<integer>{n}</integer>
\t\t\t<key>ROIs</key>
\t\t\t<array>
"""
XML_ROI = """\t\t\t\t<dict>
\t\t\t\t\t<key>Area</key>
\t\t\t\t\t<real>0.0</real>
\t\t\t\t\t<key>Center</key>
\t\t\t\t\t<string>(0.000000, 0.000000, 0.000000)</string>
\t\t\t\t\t<key>Dev</key>
\t\t\t\t\t<real>0.0</real>
\t\t\t\t\t<key>IndexInImage</key>
\t\t\t\t\t<integer>{i}</integer>
\t\t\t\t\t<key>Max</key>
\t\t\t\t\t<real>0.0</real>
\t\t\t\t\t<key>Mean</key>
\t\t\t\t\t<real>0.0</real>
\t\t\t\t\t<key>Min</key>
\t\t\t\t\t<real>0.0</real>
\t\t\t\t\t<key>Name</key>
\t\t\t\t\t<string>{name}</string>
\t\t\t\t\t<key>NumberOfPoints</key>
\t\t\t\t\t<integer>{npts}</integer>
\t\t\t\t\t<key>Point_mm</key>
\t\t\t\t\t<array>
{mm}
\t\t\t\t\t</array>
\t\t\t\t\t<key>Point_px</key>
\t\t\t\t\t<array>
{px}
\t\t\t\t\t</array>
\t\t\t\t\t<key>Total</key>
\t\t\t\t\t<real>0.0</real>
\t\t\t\t\t<key>Type</key>
\t\t\t\t\t<integer>{type}</integer>
\t\t\t\t</dict>
"""
XML_TAIL = """\t\t\t</array>
\t\t</dict>
\t</array>
</dict>
</plist>
"""


def inbreast_xml(path, rois, h, w):
    body = []
    for i, (name, pts, typ) in enumerate(rois):
        px = "\n".join(f"\t\t\t\t\t\t<string>({x:.6f}, {y:.6f})</string>" for x, y in pts)
        mm = "\n".join(f"\t\t\t\t\t\t<string>({x * 0.07:.6f}, {y * 0.07:.6f}, 0.000000)</string>" for x, y in pts)
        body.append(XML_ROI.format(i=i, name=name, npts=len(pts), mm=mm, px=px, type=typ))
    path.write_text(XML_HEAD.format(h=h, w=w, n=len(rois)) + "".join(body) + XML_TAIL)


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


H, W = 96, 80
R_PT = 0.2 / 0.07  # the documented point radius in px at 0.07 mm


@pytest.fixture
def inbreast_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "INbreast"
    (root / "AllDICOMs").mkdir(parents=True)
    (root / "AllXML").mkdir()
    write_dicom(root / "AllDICOMs" / "20586908_6c613a14b80a8591_MG_L_CC_ANON.dcm", dicom_pixels(H, W, 14, rng),
                bits_stored=14, laterality="L")
    write_dicom(root / "AllDICOMs" / "20586934_6c613a14b80a8591_MG_R_CC_ANON.dcm",
                dicom_pixels(H, W, 14, rng, chest_wall="right"), bits_stored=14, laterality="R")
    write_dicom(root / "AllDICOMs" / "22614074_2ea9b5ab9a9e0b3d_MG_L_MLO_ANON.dcm", dicom_pixels(H, W, 14, rng),
                bits_stored=14, laterality="L", view="MLO")
    rois = [
        ("Calcification", [(10, 20), (16, 20), (16, 28), (10, 28)], 10),   # polygon
        ("Calcification", [(40, 30)], 19),                                 # one point
        ("Calcification", [(50, 60), (56, 60)], 5),                        # two points, 6 px apart
        ("Mass", [(60, 10), (70, 10), (70, 20)], 10),
        ("Cluster", [(30, 30), (50, 30), (50, 50)], 10),
        ("Lesion of a kind nobody knows", [(5, 5)], 19),
    ]
    inbreast_xml(root / "AllXML" / "20586908.xml", rois, H, W)
    inbreast_xml(root / "AllXML" / "20586934.xml", [("Calcification", [(20, 40)], 19)], H, W)
    inbreast_xml(root / "AllXML" / "99999999.xml", [("Calcification", [(20, 40)], 19)], H, W)
    return root


def test_inbreast_xml_parsing_in_the_real_format(inbreast_root):
    rois, size = parse_inbreast_xml(inbreast_root / "AllXML" / "20586908.xml")
    assert size == {"height": H, "width": W}
    assert [r.name for r in rois] == ["Calcification"] * 3 + ["Mass", "Cluster", "Lesion of a kind nobody knows"]
    assert [r.kind for r in rois] == ["calcification"] * 3 + ["other", "other", "unknown"]
    np.testing.assert_array_equal(rois[2].points, [[50, 60], [56, 60]])


def test_inbreast_truth_polygons_points_and_skips(inbreast_root):
    ds = inbreast(inbreast_root)
    assert [c.id for c in ds] == ["20586908", "20586934", "22614074"]
    assert [c.laterality for c in ds] == ["L", "R", "L"]
    assert ds.counts["calcification_rois"] == 4  # the XML without an image is not read into a case
    assert ds.counts["roi_types"] == {"Mass": 1, "Cluster": 1}
    assert ds.counts["unknown_roi"] == {"Lesion of a kind nobody knows": 1}
    assert ds.counts["no_xml"] == 1 and ds.counts["xml_without_image"] == 1
    assert [s["id"] for s in ds.skipped] == ["99999999"]

    d = ds[0].load()
    assert d.image.shape == (H, W) and d.truth.shape == (H, W) and d.spacing_mm == pytest.approx(0.07)
    t = d.truth
    # polygon x 10..16, y 20..28: every pixel centre inside by a margin is in, every one well outside is out
    yy, xx = np.mgrid[:H, :W]
    inside = (xx > 10.5) & (xx < 15.5) & (yy > 20.5) & (yy < 27.5)
    near = (xx >= 9) & (xx <= 17) & (yy >= 19) & (yy <= 29)
    assert t[inside].all()
    point = disk((H, W), 30, 40, R_PT)
    two = disk((H, W), 60, 53, max(R_PT, 3.0))
    rest = t & ~near
    np.testing.assert_array_equal(rest, point | two)  # the mass, the cluster and the unknown ROI drew nothing

    # the right breast is mirrored to the canonical orientation, and its truth with it
    d = ds[1].load()
    np.testing.assert_array_equal(d.truth, disk((H, W), 40, W - 1 - 20, R_PT))
    assert not ds[2].load().truth.any()


def test_inbreast_unknown_roi_type_can_be_an_error(inbreast_root):
    with pytest.raises(DatasetError, match="unknown ROI type 'Lesion of a kind nobody knows'") as e:
        inbreast(inbreast_root, unknown_roi="error")
    assert "20586908.xml" in str(e.value)


def test_inbreast_bad_files(inbreast_root):
    (inbreast_root / "AllXML" / "20586934.xml").write_text("<plist><dict><key>Images</key>")
    with pytest.raises(DatasetError, match="20586934.xml.*not an OsiriX XML plist"):
        inbreast(inbreast_root)
    inbreast_xml(inbreast_root / "AllXML" / "20586934.xml", [("Calcification", [(1, 2)], 19)], H + 1, W)
    ds = inbreast(inbreast_root)
    with pytest.raises(DatasetError, match=f"states an image of {H + 1} x {W}"):
        ds[1].load()
    inbreast_xml(inbreast_root / "AllXML" / "20586934.xml", [("Calcification", [(1, 2)], 19)], H, W)
    xml = inbreast_root / "AllXML" / "20586934.xml"
    xml.write_text(xml.read_text().replace("<string>(1.000000, 2.000000)</string>", "<string>(nan-ish)</string>"))
    with pytest.raises(DatasetError, match="not of the form"):
        inbreast(inbreast_root)


CBIS_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]
UID = "1.3.6.1.4.1.9590.100.1.2.{}"


def _cbis_row(pid, side, abn, kind, image, roi):
    return {"patient_id": pid, "breast density": "2", "left or right breast": side, "image view": "CC",
            "abnormality id": str(abn), "abnormality type": kind, "calc type": "PLEOMORPHIC",
            "calc distribution": "CLUSTERED", "assessment": "4", "pathology": "MALIGNANT", "subtlety": "3",
            "image file path": image, "cropped image file path": roi.replace("000001.dcm", "000000.dcm"),
            "ROI mask file path": roi + "\n"}


def test_cbis_ddsm_reader(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "CBIS"
    h, w = 72, 60
    img_a = f"Calc-Test_P_00038_LEFT_CC/{UID.format(1)}/{UID.format(2)}/000000.dcm"
    roi_a1 = f"Calc-Test_P_00038_LEFT_CC_1/{UID.format(3)}/{UID.format(4)}/000001.dcm"
    roi_a2 = f"Calc-Test_P_00038_LEFT_CC_2/{UID.format(5)}/{UID.format(6)}/000001.dcm"
    m1, m2 = disk((h, w), 20, 15, 4), disk((h, w), 50, 30, 6)
    for rel, pix in ((img_a, dicom_pixels(h, w, 16, rng)), (roi_a1, m1 * 255), (roi_a2, m2 * 255)):
        (root / rel).parent.mkdir(parents=True)
        write_dicom(root / rel, pix.astype(np.uint16), pixel_spacing=None, laterality=None)
    # subject B as the TCIA download lays it out: the CSV's UID folders do not exist, the files sit
    # under renamed folders, and the ROI folder holds the cropped lesion next to the mask
    img_b = f"Calc-Test_P_00041_RIGHT_CC/{UID.format(7)}/{UID.format(8)}/000000.dcm"
    roi_b = f"Calc-Test_P_00041_RIGHT_CC_1/{UID.format(9)}/{UID.format(10)}/000001.dcm"
    b_dir = root / "Calc-Test_P_00041_RIGHT_CC" / "08-29-2017-DDSM-96009" / "1.000000-full mammogram images-63992"
    r_dir = root / "Calc-Test_P_00041_RIGHT_CC_1" / "08-29-2017-DDSM-06720" / "1.000000-ROI mask images-21487"
    b_dir.mkdir(parents=True)
    r_dir.mkdir(parents=True)
    write_dicom(b_dir / "1-1.dcm", dicom_pixels(h, w, 16, rng, chest_wall="right"), pixel_spacing=None, laterality=None)
    mb = disk((h, w), 30, 50, 5)
    write_dicom(r_dir / "1-1.dcm", dicom_pixels(12, 11, 16, rng), pixel_spacing=None, laterality=None)  # the crop
    write_dicom(r_dir / "1-2.dcm", (mb * 255).astype(np.uint16), pixel_spacing=None, laterality=None)
    # subject C: a mask of the wrong size
    img_c = f"Calc-Test_P_00050_LEFT_CC/{UID.format(11)}/{UID.format(12)}/000000.dcm"
    roi_c = f"Calc-Test_P_00050_LEFT_CC_1/{UID.format(13)}/{UID.format(14)}/000001.dcm"
    for rel, pix in ((img_c, dicom_pixels(h, w, 16, rng)), (roi_c, np.zeros((h, w + 2), np.uint16))):
        (root / rel).parent.mkdir(parents=True)
        write_dicom(root / rel, pix, pixel_spacing=None, laterality=None)
    rows = [_cbis_row("P_00038", "LEFT", 1, "calcification", img_a, roi_a1),
            _cbis_row("P_00038", "LEFT", 2, "calcification", img_a, roi_a2),
            _cbis_row("P_00038", "LEFT", 3, "mass", img_a, roi_a2),
            _cbis_row("P_00041", "RIGHT", 1, "calcification", img_b, roi_b),
            _cbis_row("P_00050", "LEFT", 1, "calcification", img_c, roi_c)]
    with open(root / "calc_case_description_test_set.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=CBIS_COLUMNS)
        wr.writeheader()
        wr.writerows(rows)

    ds = cbis_ddsm(root)
    assert [c.id for c in ds] == ["Calc-Test_P_00038_LEFT_CC", "Calc-Test_P_00041_RIGHT_CC", "Calc-Test_P_00050_LEFT_CC"]
    assert [c.subset for c in ds] == ["test"] * 3 and [c.laterality for c in ds] == ["L", "R", "L"]
    assert ds.counts["calcification_rows"] == 4 and ds.counts["other_abnormality_rows"] == {"mass": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the films' missing spacing warns; the default is checked below
        a = ds[0].load()
        b = ds[1].load()
        assert a.spacing_mm == pytest.approx(0.05)
        np.testing.assert_array_equal(a.truth, m1 | m2)
        np.testing.assert_array_equal(b.truth, mb[:, ::-1])  # chest wall on the right: mirrored with the image
        with pytest.raises(DatasetError, match=f"ROI mask of {h} x {w + 2} px does not match"):
            ds[2].load()
    assert cbis_ddsm(root, spacing_mm=0.1)[0].spacing_mm == 0.1
    (root / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="missing column"):
        cbis_ddsm(root, csv_files=[root / "bad.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="calc_case_description"):
        cbis_ddsm(tmp_path / "empty")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    h, w = 50, 40
    ramp = np.linspace(1.0, 0.2, w)[None, :]  # bright on the left: the chest wall, so no mirroring
    for stem in ("a", "b", "c"):
        Image.fromarray((ramp * (0.8 + 0.2 * rng.random((h, w))) * 255).astype(np.uint8)).save(tmp_path / f"{stem}.png")
    ta = disk((h, w), 10, 10, 3)
    Image.fromarray(ta.astype(np.uint8) * 255).save(tmp_path / "a.mask.png")
    Image.fromarray(np.zeros((h + 1, w), np.uint8)).save(tmp_path / "c.mask.png")
    ds = image_folder(tmp_path, spacing_mm=0.07)
    assert [c.id for c in ds] == ["a", "c"]
    assert ds.skipped == [{"id": "b", "reason": "missing truth file b.mask.png"}] and ds.counts["missing_truth"] == 1
    d = ds[0].load()
    assert d.image.shape == (h, w) and d.spacing_mm == 0.07
    np.testing.assert_array_equal(d.truth, ta)
    with pytest.raises(DatasetError, match="c.mask.png.*does not match"):
        ds[1].load()
    with pytest.raises(FileNotFoundError, match="b.mask.png"):
        image_folder(tmp_path, spacing_mm=0.07, missing_truth="error")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        image_folder(tmp_path / "nope")


def test_synthetic_set_halves():
    ds = synthetic(5, seed=7, size=(128, 160))
    assert [c.subset for c in ds] == ["regular"] * 3 + ["faint"] * 2
    assert len({c.id for c in ds}) == 5 and ds.subsets == ["faint", "regular"]
    from mcgr.synth.phantom import breast_phantom

    d = ds[4].load()
    ph = breast_phantom(128, 160, seed=11, faint=True)
    np.testing.assert_array_equal(d.truth, ph.truth.numpy())
    np.testing.assert_array_equal(d.image, ph.image.numpy())
    with pytest.raises(ValueError, match="n must be"):
        synthetic(0)
