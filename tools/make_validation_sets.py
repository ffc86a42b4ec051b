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

Both are ``volumes`` layouts whose cases are all non-test: ``medsad calibrate --split all`` and
``medsad evaluate --split all`` read every case.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

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


def write_set(name: str, out: Path) -> Path:
    """Generate set ``name`` into ``out/name``: its training cases of the kept anatomy only."""
    target = out / name
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it or choose another --out")
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
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    args = p.parse_args()
    for name in args.sets.split(","):
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}; expected one of {', '.join(SETS)}")
        target = write_set(name, args.out)
        print(f"{name}: {len(list((target / 'imagesTr').glob('*.nii.gz')))} volumes in {target}")


if __name__ == "__main__":
    main()
