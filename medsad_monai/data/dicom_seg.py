"""A lesion mask as a DICOM Segmentation object (SEG) that references its source series, for PACS
viewers (OHIF, 3D Slicer's DICOM module). Written with ``pydicom-seg`` (what MONAI Label uses for
its own DICOM SEG): one segment, *Lesion* (SNOMED CT 52988006), frames only where it has voxels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medsad_monai.data.dicom import DicomSeries
from medsad_monai.data.volumes import Geometry

logger = logging.getLogger(__name__)

__all__ = ["write_dicom_seg", "SEG_SERIES_NUMBER"]

#: The SEG's own series number (viewers list it beside the source series).
SEG_SERIES_NUMBER = 300


def _template(description: str) -> dict:
    """dcmqi-style meta-information of the one segment."""
    return {
        "ContentCreatorName": "MedSAD",
        "ClinicalTrialSeriesID": "MedSAD",
        "ClinicalTrialTimePointID": "1",
        "ClinicalTrialCoordinatingCenterName": "MedSAD",
        "SeriesDescription": description,
        "SeriesNumber": str(SEG_SERIES_NUMBER),
        "InstanceNumber": "1",
        "ContentLabel": "LESION",
        "ContentDescription": "MedSAD-CLIP lesions: research use only",  # LO: at most 64 characters
        "BodyPartExamined": "",
        "segmentAttributes": [
            [
                {
                    "labelID": 1,
                    "SegmentLabel": "Lesion",
                    "SegmentDescription": description,
                    "SegmentAlgorithmType": "AUTOMATIC",
                    "SegmentAlgorithmName": "MedSAD-CLIP",
                    "SegmentedPropertyCategoryCodeSequence": {
                        "CodeValue": "49755003",
                        "CodingSchemeDesignator": "SCT",
                        "CodeMeaning": "Morphologically Altered Structure",
                    },
                    "SegmentedPropertyTypeCodeSequence": {
                        "CodeValue": "52988006",
                        "CodingSchemeDesignator": "SCT",
                        "CodeMeaning": "Lesion",
                    },
                    "recommendedDisplayRGBValue": [230, 38, 25],
                }
            ]
        ],
    }


def write_dicom_seg(
    mask: np.ndarray,
    geometry: Geometry,
    series: DicomSeries,
    out_path: str | Path,
    description: str = "MedSAD lesion",
) -> Path | None:
    """Write the ``(I, J, K)`` binary ``mask`` on ``series``' grid (``geometry``, as
    :func:`~medsad_monai.data.dicom.load_dicom_series` read it) as a DICOM SEG referencing the
    series; None (nothing written) when the mask is empty: a SEG holds at least one frame.

    Raises:
        ValueError: ``pydicom-seg`` is not installed, or the series' files do not read.
    """
    if not np.any(mask):
        logger.info("%s: no lesion voxels, so no DICOM SEG is written", series)
        return None
    try:
        import pydicom
        import pydicom_seg
        import SimpleITK as sitk
    except ImportError as err:
        raise ValueError(f"writing DICOM SEG needs pydicom-seg and SimpleITK ({err}): pip install pydicom-seg") from err
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.affine  # DICOM's patient space is LPS
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray((np.asarray(mask) > 0).astype(np.uint8).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).flatten()])
    try:
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    except Exception as err:  # InvalidDicomError, OSError
        raise ValueError(f"{series}: cannot read its headers for the SEG ({type(err).__name__}: {err})") from err
    try:
        writer = pydicom_seg.MultiClassWriter(
            template=pydicom_seg.template.from_dcmqi_metainfo(_template(description)),
            inplane_cropping=False,
            skip_empty_slices=True,
            skip_missing_segment=False,
        )
        dataset = writer.write(image, sources)
    except Exception as err:  # the template's schema (NotImplementedError without a message), the sources
        raise ValueError(f"{series}: the DICOM SEG could not be made ({type(err).__name__}: {err})") from err
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    dataset.save_as(str(partial))
    partial.replace(out_path)  # never a half-written SEG under the final name
    logger.info("%s: DICOM SEG with %d frame(s) -> %s", series, int(dataset.NumberOfFrames), out_path)
    return out_path
