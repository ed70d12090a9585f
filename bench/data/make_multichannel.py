"""Derive a two-channel dataset: each case's image plus a synthetic second contrast of the same anatomy.

    python bench/data/make_multichannel.py --source WS/raw/Dataset201_Hippocampus --root WS
    autoseg plan_and_preprocess -d 203 --root WS --time-budget 10m
    autoseg train 3d_fullres 0 -d 203 --root WS --time-budget 10m
    autoseg predict -i WS/raw/Dataset203_HippocampusTwoChannel/imagesTs -o WS/pred203 -d 203 --root WS -c 3d_fullres -f 0
    autoseg evaluate -ref WS/raw/Dataset203_HippocampusTwoChannel/labelsTs -pred WS/pred203 -d 203 --root WS

writes ``WS/raw/Dataset203_HippocampusTwoChannel/`` with the source's split and labels unchanged and
two co-registered channels per case, ``dataset.json`` ``channel_names`` {"0": "T1", "1": "T2"}:
- channel 0 (``{case}_0000``): the source image, byte for byte;
- channel 1 (``{case}_0001``): a different contrast made from it, in the same geometry:
  1. the source intensities mapped to [0, 1] by the case's 1st and 99th percentiles (clipped);
  2. a smooth NON-monotone transfer curve (a shape-preserving cubic through 6 knots at 0, 0.2, ..
     1), drawn once for the dataset from ``--seed`` so that it has at least two turns, spans at
     least half of [0, 1] and climbs or falls at most 0.45 between neighbouring knots: grey levels
     are reordered, so channel 1 is not a rescaled copy of channel 0 (as T2 is not of T1); each
     case's knots get a small jitter (SD 0.03);
  3. a smooth multiplicative bias field per case: exp of a random second-order polynomial of the
     normalised (z, y, x) coordinates, about +-20% over the volume;
  4. Rician noise (magnitude of the signal plus complex Gaussian noise, SD ``--noise`` = 0.04 of the
     [0, 1] range), independent of channel 0's;
  5. scaled by 1000 and written as float32.
Everything is drawn from ``--seed`` and the case id: the same arguments write identical files.
The suite (bench/suite.py) builds it as dataset 203 from its Hippocampus split 201.
"""
from __future__ import annotations

import logging
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common
from raw_datasets import building_folder, derivation_parser, raw_cases, run_derivation, write_derived_meta  # noqa: E402

log = logging.getLogger("bench.make_multichannel")

KNOTS = np.linspace(0.0, 1.0, 6)
KNOT_JITTER = 0.03
MAX_KNOT_STEP = 0.45  # between neighbouring knots: no steep stretch that would turn texture into contours
BIAS_LINEAR_SD, BIAS_QUADRATIC_SD = 0.12, 0.06
SCALE = 1000.0


def transfer_knots(seed: int) -> np.ndarray:
    """The dataset's transfer-curve values at ``KNOTS``: at least two turns, a range of at least 0.5,
    no step between neighbouring knots above ``MAX_KNOT_STEP``."""
    rng = np.random.default_rng([seed, 0])
    while True:
        values = rng.uniform(0.05, 0.95, len(KNOTS))
        turns = int((np.diff(np.sign(np.diff(values))) != 0).sum())
        if turns >= 2 and np.ptp(values) >= 0.5 and np.abs(np.diff(values)).max() <= MAX_KNOT_STEP:
            return values


def transfer(t: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The smooth curve through (``KNOTS``, ``values``) at ``t`` in [0, 1] (monotone between knots)."""
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(KNOTS, values)(t)


def bias_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """exp(second-order polynomial of coordinates in [-1, 1]) of ``shape``: a smooth multiplicative field."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij", sparse=True)
    log_field = np.zeros(shape)
    for i, a in enumerate(axes):
        log_field = log_field + rng.normal(0, BIAS_LINEAR_SD) * a + rng.normal(0, BIAS_QUADRATIC_SD) * a * a
        for b in axes[i + 1:]:
            log_field = log_field + rng.normal(0, BIAS_QUADRATIC_SD) * a * b
    return np.exp(log_field)


def second_contrast(image: np.ndarray, knots: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Channel 1 of one case from its channel-0 array (any shape and dtype): float32 in about 0..1000."""
    x = image.astype(np.float64)
    lo, hi = np.percentile(x, [1, 99])
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(x)
    case_knots = np.clip(knots + rng.normal(0, KNOT_JITTER, knots.shape), 0.0, 1.0)
    signal = transfer(t, case_knots) * bias_field(x.shape, rng)
    real = signal + rng.normal(0, noise, x.shape)
    imaginary = rng.normal(0, noise, x.shape)
    return (np.sqrt(real ** 2 + imaginary ** 2) * SCALE).astype(np.float32)


def build(source: Path, root: Path, dataset_id: int = 203, seed: int = 0, noise: float = 0.04,
          name: str | None = None) -> Path:
    """Write ``root/raw/Dataset{id}_{name}`` from the single-channel raw dataset ``source``; return it."""
    import SimpleITK as sitk

    meta, cases = raw_cases(source)
    if len(meta["channel_names"]) != 1:
        raise SystemExit(f"{source}: expected one channel, found {len(meta['channel_names'])} "
                         f"({meta['channel_names']})")
    name = name or f"{meta.get('name', source.name.split('_', 1)[-1])}TwoChannel"
    final = Path(root) / "raw" / f"Dataset{dataset_id:03d}_{name}"
    ending = meta["file_ending"]
    knots = transfer_knots(seed)
    with building_folder(final, ("imagesTr", "labelsTr", "imagesTs", "labelsTs")) as tmp:
        for case in cases:
            folder = tmp / f"images{case.part}"
            shutil.copyfile(case.images[0], folder / f"{case.case_id}_0000{ending}")
            image = sitk.ReadImage(str(case.images[0]))
            rng = np.random.default_rng([seed, 1, zlib.crc32(case.case_id.encode())])
            out = sitk.GetImageFromArray(second_contrast(sitk.GetArrayFromImage(image), knots, noise, rng))
            out.CopyInformation(image)
            sitk.WriteImage(out, str(folder / f"{case.case_id}_0001{ending}"), True)
            if case.label is not None:
                shutil.copyfile(case.label, tmp / f"labels{case.part}" / f"{case.case_id}{ending}")
        out_meta = dict(meta, name=name, channel_names={"0": "T1", "1": "T2"},
                        numTraining=sum(c.part == "Tr" for c in cases),
                        description=f"{meta.get('name', source.name)} with a synthetic second contrast (channel 1: "
                                    f"non-monotone transfer curve {np.round(knots, 3).tolist()}, bias field, Rician "
                                    f"noise {noise}); bench/data/make_multichannel.py --seed {seed}")
        write_derived_meta(tmp, out_meta)
    log.info("wrote %s: %d training + %d held-out cases, transfer knots %s", final, out_meta["numTraining"],
             len(cases) - out_meta["numTraining"], np.round(knots, 3).tolist())
    return final


def main(argv: list[str] | None = None) -> int:
    p = derivation_parser(__doc__.splitlines()[0], "single-channel raw dataset folder", 203,
                          "the source's name + 'TwoChannel'")
    p.add_argument("--noise", type=float, default=0.04, help="Rician noise SD as a fraction of the [0, 1] range")
    args = p.parse_args(argv)
    return run_derivation(args.source, lambda: build(args.source, args.root, args.dataset_id, args.seed, args.noise, args.name))


if __name__ == "__main__":
    sys.exit(main())
