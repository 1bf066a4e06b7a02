"""DICOM files the tests write themselves: every flavour the reader must handle, from known pixels."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless,
                         generate_uid)

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
COMPRESSED = {"rle": RLELossless, "j2k": JPEG2000Lossless, "jpegls": JPEGLSLossless, "jpeg_lossless": JPEGLosslessSV1}


def breast_phantom(rows: int, cols: int, bits: int, rng: np.random.Generator, *, chest_wall: str = "left",
                   signed: bool = False) -> np.ndarray:
    """Stored values: a textured half-ellipse against the chest wall, air elsewhere, full ``bits`` range used."""
    top = (1 << bits) - 1
    y, x = np.mgrid[0:rows, 0:cols]
    xc = x if chest_wall == "left" else cols - 1 - x
    inside = ((y - rows / 2) / (0.42 * rows)) ** 2 + (xc / (0.65 * cols)) ** 2 <= 1
    a = rng.integers(0, top // 16, size=(rows, cols))
    a[inside] = rng.integers(top // 4, top, size=int(inside.sum()))
    a.flat[rng.integers(0, a.size)] = top
    a.flat[rng.integers(0, a.size)] = 0
    if signed:
        a = a - (1 << (bits - 1))
        return a.astype(np.int16)
    return a.astype(np.uint16)


def write_dicom(path, pixels: np.ndarray, *, bits_stored: int = 16, photometric: str = "MONOCHROME2",
                slope: float | None = None, intercept: float | None = None, window: tuple[float, float] | None = None,
                voi_lut: tuple[list[int], np.ndarray] | None = None, laterality: str | None = "L",
                laterality_keyword: str = "ImageLaterality", pixel_spacing: float | None = 0.07,
                imager_spacing: float | None = None, emf: float | None = None, syntax: str = "native",
                view: str | None = "CC", patient_orientation: str | None = None, modality: str = "MG",
                extra: dict | None = None) -> str:
    """Write ``pixels`` (the stored values, uint16 or int16 [rows, cols]) as a DICOM file at ``path``."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "P0"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "mcgr-tests"
    if laterality is not None:
        setattr(ds, laterality_keyword, laterality)
    if view is not None:
        ds.ViewPosition = view
    if patient_orientation is not None:
        ds.PatientOrientation = patient_orientation.split("\\")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if pixel_spacing is not None:
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = [imager_spacing, imager_spacing]
    if emf is not None:
        ds.EstimatedRadiographicMagnificationFactor = emf
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", list(voi_lut[0]))  # LUTDescriptor
        item.add_new(0x00283006, "OW", np.asarray(voi_lut[1], "<u2").tobytes())  # LUTData
        ds.VOILUTSequence = [item]
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if syntax in ("rle", "j2k", "jpegls"):
        ds.compress(COMPRESSED[syntax], pixels)
    elif syntax == "jpeg_lossless":
        _gdcm_compress(ds, path)
        return str(path)
    elif syntax != "native":
        raise ValueError(f"unknown syntax {syntax!r}")
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _gdcm_compress(ds: Dataset, path) -> None:
    """JPEG Lossless (process 14, SV1) through python-gdcm, the installed encoder for it."""
    import gdcm

    tmp = str(path) + ".native.dcm"
    ds.save_as(tmp, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(tmp)
    if not reader.Read():
        raise RuntimeError("gdcm cannot read the native file")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("gdcm cannot encode JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("gdcm cannot write the JPEG Lossless file")
    import os

    os.unlink(tmp)


def can_encode(syntax: str) -> tuple[bool, str]:
    """Whether this environment can write ``syntax``, and why not."""
    if syntax == "native":
        return True, ""
    if syntax == "jpeg_lossless":
        try:
            import gdcm  # noqa: F401
        except ImportError:
            return False, "python-gdcm (the JPEG Lossless encoder) is not installed"
        return True, ""
    from pydicom.pixels import get_encoder

    enc = get_encoder(COMPRESSED[syntax])
    if not enc.is_available:
        return False, f"no encoder for {COMPRESSED[syntax].name}: {enc.missing_dependencies}"
    return True, ""
