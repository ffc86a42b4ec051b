"""Export a MedSAD checkpoint as a MONAI bundle, and the components its ``inference.json`` names.

``medsad export-bundle --ckpt CKPT --out DIR`` (:func:`export_bundle`) writes::

    DIR/
      configs/metadata.json    Model Zoo metadata (schema, versions, network_data_format …)
      configs/inference.json   a MONAI bundle config: ``python -m monai.bundle run`` runs it
      configs/logging.conf     logging for ``monai.bundle run`` (INFO to stdout)
      models/model.pt          the checkpoint, copied byte for byte
      docs/README.md           what the model is, how to run it, its operating point, its limits
      LICENSE                  Apache-2.0 (by reference) and the not-for-clinical-use statement

The bundle's pipeline is MedSAD's own inference path taken apart into the ids a MONAI bundle
has — ``preprocessing`` (:class:`LoadVolumed`, :class:`NormalizeVolumed`), ``inferer``
(:class:`SliceWiseInferer`: :meth:`Predictor.predict_volume
<medsad_monai.engine.inference.Predictor.predict_volume>`), ``postprocessing``
(:class:`LesionMaskd` at the checkpoint's calibrated operating point, then the ``writer``
:class:`MaskWriter`) and ``evaluator`` (:class:`SliceWiseEvaluator`) — so that its mask is
the same, voxel for voxel, as the one ``medsad infer --ckpt CKPT`` writes: the same functions
run in the same order on the same numbers. The bundle therefore needs ``medsad_monai``
installed where it runs (docs/bundle.md).
"""

from medsad_monai.bundle.components import (
    LesionMaskd,
    LoadVolumed,
    MaskWriter,
    NormalizeVolumed,
    SliceWiseEvaluator,
    SliceWiseInferer,
    list_inputs,
    load_network,
    setup_logging,
)
from medsad_monai.bundle.export import BUNDLE_FILES, SCHEMA_URL, export_bundle, training_data_of

__all__ = [
    "SCHEMA_URL",
    "BUNDLE_FILES",
    "export_bundle",
    "training_data_of",
    "load_network",
    "list_inputs",
    "setup_logging",
    "LoadVolumed",
    "NormalizeVolumed",
    "SliceWiseInferer",
    "LesionMaskd",
    "MaskWriter",
    "SliceWiseEvaluator",
]
