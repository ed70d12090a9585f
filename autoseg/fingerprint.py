"""Extract the dataset fingerprint (``autoseg fingerprint``).

Per case: shape, spacing, shape after cropping to the nonzero region, voxels and
connected-component sizes per class. Per channel: foreground intensity statistics from a
bounded, seeded sample (at most ``SAMPLES_PER_CASE`` foreground voxels per case and channel,
so memory stays small however large the dataset). Connected components use full
connectivity (26-neighbourhood in 3D). The result depends only on the data, never on the
number of worker processes: each case draws its sample with a seed made from its id.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import zlib
from multiprocessing import get_context

import numpy as np

from autoseg.dataset import Case, DatasetSpec
from autoseg.device import pool_size
from autoseg.fingerprint_types import (
    FINGERPRINT_SCHEMA_VERSION,
    CaseFingerprint,
    ClassFingerprint,
    Fingerprint,
    load_fingerprint,
    save_fingerprint,
)
from autoseg.imageio import read_image, read_label
from autoseg.labels import foreground_values
from autoseg.paths import Workspace
from autoseg.plans import IntensityProperties
from autoseg.cropping import nonzero_bbox

log = logging.getLogger(__name__)
SAMPLES_PER_CASE = 10_000


def _case_seed(case_id: str, seed: int) -> int:
    return zlib.crc32(case_id.encode()) ^ seed


def _analyse_case(case: Case, foreground: tuple[int, ...], seed: int, ignore: int | None = None):
    """Return (CaseFingerprint, per-channel foreground sample arrays); voxels of the ``ignore`` label
    are not foreground (their class is unknown)."""
    from scipy import ndimage

    image, geom = read_image(case.images)
    label, _ = read_label(case.label)
    box = nonzero_bbox(image)
    cropped_shape = tuple(hi - lo for lo, hi in box)
    seg = label[0]
    fg = seg > 0
    if ignore is not None:
        fg &= seg != ignore
    rng = np.random.default_rng(_case_seed(case.case_id, seed))
    fg_values = image[:, fg]  # (C, n_fg)
    if fg_values.shape[1] > SAMPLES_PER_CASE:
        idx = np.sort(rng.choice(fg_values.shape[1], SAMPLES_PER_CASE, replace=False))
        fg_values = fg_values[:, idx]
    class_voxels: dict[str, int] = {}
    class_components: dict[str, tuple[int, ...]] = {}
    structure = np.ones((3,) * seg.ndim, bool)
    for cls in foreground:
        mask = seg == cls
        n = int(mask.sum())
        class_voxels[str(cls)] = n
        if n:
            comp, num = ndimage.label(mask, structure=structure)
            sizes = np.bincount(comp.ravel())[1:]
            class_components[str(cls)] = tuple(int(s) for s in sorted(sizes, reverse=True))
        else:
            class_components[str(cls)] = ()
    cfp = CaseFingerprint(
        case_id=case.case_id,
        shape=tuple(int(s) for s in seg.shape),
        spacing=tuple(float(s) for s in geom.spacing),
        shape_after_crop=cropped_shape,
        class_voxels=class_voxels,
        class_component_sizes=class_components,
    )
    return cfp, fg_values.astype(np.float32)


def _intensity(values: np.ndarray) -> IntensityProperties:
    if values.size == 0:
        return IntensityProperties(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p = np.percentile(values, [0.5, 50.0, 99.5])
    return IntensityProperties(
        mean=float(values.mean()), std=float(values.std()), median=float(p[1]),
        min=float(values.min()), max=float(values.max()),
        percentile_00_5=float(p[0]), percentile_99_5=float(p[2]),
    )


def summarise_classes(cases: list[CaseFingerprint], labels: dict[str, object]) -> tuple[ClassFingerprint, ...]:
    """Per-class presence, voxel fraction and component statistics over ``cases``."""
    names = {v: k for k, v in labels.items() if isinstance(v, int)}  # region members may have no name of their own
    out = []
    for cls in foreground_values(labels):
        key = str(cls)
        present = [c for c in cases if c.class_voxels.get(key, 0) > 0]
        fractions = [c.class_voxels.get(key, 0) / float(np.prod(c.shape)) for c in cases]
        volumes = [s * float(np.prod(c.spacing)) for c in cases for s in c.class_component_sizes.get(key, ())]
        counts = [len(c.class_component_sizes.get(key, ())) for c in present]
        vol = np.percentile(volumes, [10, 50, 90]) if volumes else np.zeros(3)
        out.append(ClassFingerprint(
            label=cls, name=names.get(cls, f"value {cls}"),
            presence_fraction=len(present) / max(1, len(cases)),
            mean_voxel_fraction=float(np.mean(fractions)) if fractions else 0.0,
            num_components_median=float(np.median(counts)) if counts else 0.0,
            component_volume_mm3_median=float(vol[1]),
            component_volume_mm3_p10=float(vol[0]),
            component_volume_mm3_p90=float(vol[2]),
        ))
    return tuple(out)


def extract_fingerprint(spec: DatasetSpec, num_processes: int | None = None, seed: int = 1234) -> Fingerprint:
    """Analyse every training case of ``spec`` (in parallel) and summarise the dataset."""
    from tqdm import tqdm

    cases = spec.training_cases()
    jobs = [(c, spec.foreground_labels, seed, spec.ignore_label) for c in cases]
    n = pool_size(num_processes, len(jobs))
    results = []
    bar = tqdm(total=len(jobs), desc="fingerprint", unit="case", disable=None)
    if n == 1:
        for j in jobs:
            results.append(_analyse_case(*j))
            bar.update()
    else:
        with get_context("fork").Pool(n) as pool:
            for r in pool.imap(_star_analyse, jobs, chunksize=4):
                results.append(r)
                bar.update()
    bar.close()
    case_fps = [r[0] for r in results]
    intensity = tuple(
        _intensity(np.concatenate([r[1][c] for r in results])) for c in range(spec.num_channels)
    )
    reductions = [np.prod(c.shape_after_crop) / np.prod(c.shape) for c in case_fps]
    is_2d = any(s == 1 for s in (c.shape[0] for c in case_fps)) and all(c.shape[0] == 1 for c in case_fps)
    return Fingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION,
        dataset_name=spec.folder.name,
        channel_names=spec.channel_names,
        labels=dict(spec.labels),
        regions_class_order=spec.regions_class_order,
        file_ending=spec.file_ending,
        is_2d=is_2d,
        cases=tuple(case_fps),
        intensity=intensity,
        classes=summarise_classes(case_fps, spec.labels),
        crop_reduction_median=float(np.median(reductions)),
        source_signature=raw_signature(spec),
    )


def _star_analyse(job):
    return _analyse_case(*job)


def raw_signature(spec: DatasetSpec) -> str:
    """A hash of the raw files' names, sizes and modification times, and of dataset.json."""
    h = hashlib.sha1()
    files = [p for p in (spec.folder / "dataset.json",) if p.is_file()]
    if spec.file_list is not None:  # an explicit file list: its files, wherever they are
        files += sorted({p for c in spec.file_list for p in c.images + (c.label,)})
    else:
        for sub in ("imagesTr", "labelsTr"):
            folder = spec.folder / sub
            files += sorted(folder.iterdir()) if folder.is_dir() else []
    for f in files:
        st = f.stat()
        name = f.relative_to(spec.folder) if f.is_relative_to(spec.folder) else f
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def cli_fingerprint(args: argparse.Namespace) -> int:
    from autoseg.integrity import verify_dataset_folder

    ws = Workspace.resolve(args.root)
    name = ws.dataset_name(args.dataset)
    spec = verify_dataset_folder(ws.raw / name, args.num_processes)
    target = ws.preprocessed / name / "fingerprint.json"
    if target.is_file() and not args.clean:
        try:
            if load_fingerprint(target).source_signature == raw_signature(spec):
                log.info("fingerprint of %s is up to date (%s)", name, target)
                return 0
        except Exception:  # an outdated or damaged file is simply recomputed
            pass
    fp = extract_fingerprint(spec, args.num_processes)
    save_fingerprint(fp, target)
    log.info("wrote %s (%d cases)", target, len(fp.cases))
    return 0
