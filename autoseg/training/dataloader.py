"""Training and validation batches: patch sampling with foreground oversampling, augmentation,
and deep-supervision targets, produced in background worker processes.

The batch at global iteration ``i`` is a pure function of ``(seed, i)``: every random draw for
it comes from generators seeded with both, whatever the number of workers, so a resumed run
sees exactly the batches an uninterrupted run would have seen.

Oversampling: of a batch of ``B`` samples, the last ``B - round(B * (1 - p))`` are forced to
contain foreground (p = ``oversample_foreground_percent``; B=2 and p=0.33 force one, B=7 force
two). A forced sample picks a class present in its case at random and centres the patch on a
random stored voxel of that class; the others are placed uniformly at random, except on a dataset
with an ignore label (sparse annotation), where they are centred on a random annotated voxel
(background included), so that a patch of unannotated voxels, which teaches nothing, is rare.

Small classes (``class_shares``, resolved by ``small_classes.resolve_small_classes``): ``k``
samples of each batch each hold a connected component of one small class, ``k`` being ``B x (sum
of shares)`` rounded at random (B=2 and 0.33: one sample in 66% of the batches, none in the
others, so 33% of all samples). They take the foreground-forced places first and the randomly
placed ones only when ``k`` exceeds those, so the share of randomly placed patches (the only ones
placed like the sliding window's tiles: an image smaller than the patch sits in its centre) stays
that of plain training. The class is drawn with
probability share / sum, the case drawn among the training cases that contain the class, the
component uniformly among its components in that case (so a 5-voxel lesion beside a 500-voxel
one is drawn as often), and the voxel among the component's stored locations. The patch is then
placed at random among those that a random patch could take and that hold the voxel at least an
eighth of the patch inside its faces (``choose_lower_corner_containing``), not centred on it: a
patch always centred on a lesion teaches the network that lesions sit in the middle of its view,
which the sliding window's tiles do not respect (docs/experiments/small_class_first_runs.md). Copy-paste
(``paste_shares``, ``paste.py``): after a sample is drawn, with probability the sum of the shares
a component of a small class from another case is pasted into it; where no place matches, the
sample is replaced by one that holds that component in its own case. Without small classes the
batches are exactly those above.
"""
from __future__ import annotations

import logging
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from autoseg.device import usable_cpus
from autoseg.plans import ConfigurationPlan
from autoseg.preprocess.storage import ANNOTATED, load_case
from autoseg.training.augmentation import AugmentationConfig, build_transforms, sampling_patch_size
from autoseg.training.paste import Piece, cut_pieces, paste_piece

IN_MEMORY_LIMIT_BYTES = 2e9
log = logging.getLogger(__name__)


def num_forced(batch_size: int, percent: float) -> int:
    """How many samples of a batch must contain foreground."""
    return batch_size - int(round(batch_size * (1 - percent)))


def small_class_count(batch_size: int, share: float, rng: np.random.Generator) -> int:
    """How many samples of a batch to centre on small classes: ``batch_size * share`` rounded up
    with probability equal to its fractional part, so that over many batches the share of such
    samples is ``share`` itself (rounding to the nearest would give a batch of two 0.5 for 0.33)."""
    expected = batch_size * share
    whole = int(np.floor(expected))
    return whole + int(rng.random() < expected - whole)


def draw_class(shares: dict[int, float], rng: np.random.Generator) -> int:
    """A class of ``shares`` drawn with probability share / sum of the shares."""
    classes = list(shares)
    total = sum(shares.values())
    return classes[int(rng.choice(len(classes), p=np.array([shares[c] / total for c in classes])))]


@dataclass
class _Case:
    data: np.ndarray  # (C, Z, Y, X)
    seg: np.ndarray  # (1, Z, Y, X)
    locations: dict[int, np.ndarray]


def crop_with_padding(array: np.ndarray, lower: np.ndarray, size: tuple[int, ...], fill: float) -> np.ndarray:
    """``array[:, lower:lower+size]`` over the spatial axes, padding with ``fill`` outside."""
    spatial = array.shape[1:]
    out = np.full((array.shape[0],) + tuple(size), fill, dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for lo, sz, n in zip(lower, size, spatial):
        a, b = max(lo, 0), min(lo + sz, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - lo, a - lo + max(0, b - a)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def choose_lower_corner(shape: tuple[int, ...], size: tuple[int, ...], rng: np.random.Generator,
                        centre: np.ndarray | None = None) -> np.ndarray:
    """Lower corner of a ``size`` patch in an image of ``shape``: centred on ``centre`` if given,
    else uniform over positions that keep the patch inside (centred if the image is smaller)."""
    shape, size = np.array(shape), np.array(size)
    if centre is not None:
        return np.asarray(centre) - size // 2
    slack = shape - size
    return np.array([rng.integers(0, s + 1) if s >= 0 else s // 2 for s in slack])


def choose_lower_corner_containing(shape: tuple[int, ...], size: tuple[int, ...], patch: tuple[int, ...],
                                   voxel: np.ndarray, rng: np.random.Generator, margin_fraction: float = 0.125
                                   ) -> np.ndarray:
    """Lower corner of a ``size`` sample whose central ``patch`` (what augmentation keeps) holds
    ``voxel`` at least ``patch x margin_fraction`` from its faces, placed uniformly among those
    positions and, where they allow it, among the positions a random sample can take
    (``choose_lower_corner``: inside the image, centred on an image smaller than the sample).

    Per axis the sample's centre is drawn uniformly from the centres that both hold the voxel and
    a random sample can have; where none does both, it is the holding centre nearest to those of
    random samples (a voxel near the image's face: the patch reaches past the face)."""
    shape, size, patch, voxel = (np.asarray(a, int) for a in (shape, size, patch, voxel))
    margin = np.floor(patch * margin_fraction).astype(int)
    lo_c = voxel - (patch - 1 - margin) + patch // 2  # centres that keep the voxel inside the patch
    hi_c = voxel - margin + patch // 2
    slack = shape - size
    lo_r = np.where(slack >= 0, size // 2, slack // 2 + size // 2)  # centres of random samples
    hi_r = np.where(slack >= 0, slack + size // 2, slack // 2 + size // 2)
    lo, hi = np.maximum(lo_c, lo_r), np.minimum(hi_c, hi_r)
    centre = np.empty(len(shape), int)
    for k in range(len(shape)):
        if lo[k] <= hi[k]:
            centre[k] = rng.integers(lo[k], hi[k] + 1)
        else:  # no random position holds the voxel: the containing one nearest to them
            centre[k] = hi_c[k] if hi_c[k] < lo_r[k] else lo_c[k]
    return centre - size // 2


@dataclass(frozen=True)
class BatchSampling:
    """How the samples of each batch are drawn (the module docstring says how): ``batch_size``
    samples, a share ``oversample`` of them forced to hold foreground (``num_forced``), every draw
    seeded with ``seed`` and the batch's iteration. Small classes (resolved by
    ``small_classes.resolve_small_classes``): ``class_shares``, per class the share of the samples
    placed to hold one of its components; ``paste_shares``, per class the probability that a
    sample gets one of its components pasted in (``paste.py``). Empty: plain sampling."""
    batch_size: int
    oversample: float
    seed: int
    class_shares: dict[int, float] = field(default_factory=dict)
    paste_shares: dict[int, float] = field(default_factory=dict)

    def plain(self, seed: int) -> BatchSampling:
        """The same batches' sampling without the small classes, seeded with ``seed`` (the patch
        validation's)."""
        return BatchSampling(self.batch_size, self.oversample, seed)


class BatchSource:
    """Builds batch ``i`` from preprocessed cases, drawn as ``sampling`` says, then augmented
    (``augmentation``; None: as drawn) and with a target per deep-supervision scale (``ds_scales``;
    None: one target); picklable, used inside worker processes."""

    def __init__(self, folder: str | Path, case_ids: list[str], cfg: ConfigurationPlan, sampling: BatchSampling,
                 augmentation: AugmentationConfig | None = None, ds_scales: list[tuple[float, ...]] | None = None):
        self.folder, self.case_ids = Path(folder), list(case_ids)
        self.dim = cfg.network.dim
        self.patch = tuple(cfg.patch_size)
        self.batch_size, self.oversample, self.seed = sampling.batch_size, sampling.oversample, sampling.seed
        self.augmentation = augmentation
        self.ds_scales = ds_scales
        self.sample_size = sampling_patch_size(self.patch, augmentation) if augmentation else self.patch
        self._transforms = None
        size = sum(p.stat().st_size for p in self.folder.glob("*.data.b2")) * 4  # ~compression ratio
        self._cases = {cid: self._load(cid) for cid in self.case_ids} if size < IN_MEMORY_LIMIT_BYTES else None
        # per small class (sampled or pasted), the cases that hold it: one scan of the locations
        self._cases_with = self._cases_holding([*sampling.class_shares, *sampling.paste_shares])
        self.class_shares = self._held(sampling.class_shares)
        self._components: dict[tuple[str, int], list[np.ndarray]] = {}
        # copy-paste (TrainConfig.small_classes.paste, autoseg/training/paste.py): per sample, the
        # probability that a component of each class is pasted into it; classes in no case dropped
        self.paste_shares = self._held(sampling.paste_shares)
        self._pieces: dict[tuple[str, int], list[Piece]] = {}

    def _cases_holding(self, classes: list[int]) -> dict[int, list[str]]:
        """Per small class, the cases that contain it (a warning for a class in none)."""
        cases_with: dict[int, list[str]] = {}
        for cls in dict.fromkeys(classes):
            cases_with[cls] = [cid for cid in self.case_ids if len(self._locations(cid).get(cls, ()))]
            if not cases_with[cls]:
                log.warning("small class %d is in none of the %d cases in %s; its patches are sampled as usual",
                            cls, len(self.case_ids), self.folder)
        return cases_with

    def _held(self, shares: dict[int, float]) -> dict[int, float]:
        """``shares`` without the classes of zero share or in no case."""
        return {c: s for c, s in shares.items() if self._cases_with[c] and s > 0}

    def _locations(self, case_id: str) -> dict[int, np.ndarray]:
        if self._cases is not None:
            return self._cases[case_id].locations
        path = self.folder / f"{case_id}.loc.npz"
        if not path.is_file():
            return {}
        with np.load(path) as z:
            return {int(k): z[k] for k in z.files}

    def _load(self, case_id: str) -> _Case:
        c = load_case(self.folder, case_id)
        return _Case(c.data, c.seg, c.class_locations)

    def _case(self, case_id: str) -> _Case:
        return self._cases[case_id] if self._cases is not None else self._load(case_id)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def sample(self, case: _Case, forced: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
        """One (data, seg, inside) patch of ``sample_size`` (2D configurations: one slice); ``inside``
        is the (lower, upper) corners of the part that lies in the image, in the patch's voxels."""
        present = [k for k, v in case.locations.items() if len(v) and k != ANNOTATED] if forced else []
        voxel = None
        if present:
            cls = present[rng.integers(len(present))]
            locs = case.locations[cls]
            voxel = locs[rng.integers(len(locs))]
        elif len(case.locations.get(ANNOTATED, ())):  # sparse annotation: centred on an annotated voxel
            locs = case.locations[ANNOTATED]
            voxel = locs[rng.integers(len(locs))]
        return self._crop(case, voxel, rng)

    def small_class_slots(self, rng: np.random.Generator) -> list[int | None]:
        """Per sample of a batch, the small class whose component it holds (None: the usual sampling)."""
        slots: list[int | None] = [None] * self.batch_size
        if not self.class_shares:
            return slots
        total = sum(self.class_shares.values())
        for j in range(small_class_count(self.batch_size, min(1.0, total), rng)):
            place = self.batch_size - 1 - j  # the foreground-forced places (the last ones) first
            slots[place] = draw_class(self.class_shares, rng)
        return slots

    def component_locations(self, case_id: str, case: _Case, cls: int) -> list[np.ndarray]:
        """Indices into ``case.locations[cls]``, one array per connected component of ``cls``
        (full connectivity, as in the fingerprint) that holds stored locations. Cached per case."""
        key = (case_id, cls)
        if key not in self._components:
            from scipy import ndimage

            locs = case.locations[cls]
            mask = case.seg[0] == cls
            labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
            ids = labels[tuple(locs.T)]
            self._components[key] = [np.flatnonzero(ids == k) for k in np.unique(ids)]
        return self._components[key]

    def sample_component(self, cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
        """A (data, seg, inside) patch holding a random component of small class ``cls`` of a case
        that contains it (see ``sample``)."""
        cases = self._cases_with[cls]
        case_id = cases[rng.integers(len(cases))]
        case = self._case(case_id)
        components = self.component_locations(case_id, case, cls)
        members = components[rng.integers(len(components))]
        voxel = case.locations[cls][members[rng.integers(len(members))]]
        return self._crop(case, voxel, rng, contain=True)

    def _crop(self, case: _Case, voxel: np.ndarray | None, rng: np.random.Generator,
              contain: bool = False) -> tuple[np.ndarray, np.ndarray, tuple]:
        data, seg = case.data, case.seg
        if self.dim == 2:
            z = int(voxel[0]) if voxel is not None else int(rng.integers(data.shape[1]))
            data, seg = data[:, z], seg[:, z]
            voxel = voxel[1:] if voxel is not None else None
        if contain and voxel is not None:
            lower = choose_lower_corner_containing(data.shape[1:], self.sample_size, self.patch, voxel, rng)
        else:
            lower = choose_lower_corner(data.shape[1:], self.sample_size, rng, voxel)
        inside = (np.maximum(-lower, 0), np.minimum(np.array(data.shape[1:]) - lower, self.sample_size))
        return (crop_with_padding(data, lower, self.sample_size, 0.0), crop_with_padding(seg, lower, self.sample_size, 0),
                inside)

    def pieces(self, case_id: str, cls: int) -> list[Piece]:
        """The components of ``cls`` in a case, cut for pasting; cached per case."""
        key = (case_id, cls)
        if key not in self._pieces:
            case = self._case(case_id)
            self._pieces[key] = cut_pieces(case.data, case.seg[0], cls)
        return self._pieces[key]

    def paste(self, data: np.ndarray, seg: np.ndarray, inside: tuple, cls: int, rng: np.random.Generator) -> bool:
        """Paste one component of small class ``cls`` (the case drawn among those that hold it, then
        the component uniformly) into a sample, inside the image and the central ``patch`` that
        augmentation keeps. Returns whether a place was found (``paste_piece``)."""
        cases = self._cases_with[cls]
        pieces = self.pieces(cases[rng.integers(len(cases))], cls)
        piece = pieces[rng.integers(len(pieces))]
        if self.dim == 2:
            sections = np.flatnonzero(piece.mask.any(axis=(1, 2)))
            piece = piece.section(int(sections[rng.integers(len(sections))]))
        margin = (np.array(self.sample_size) - np.array(self.patch)) // 2
        lower = np.maximum(inside[0], margin)
        upper = np.minimum(inside[1], margin + np.array(self.patch))
        return paste_piece(data, seg[0], piece, lower, upper, rng)

    def batch(self, i: int) -> dict[str, np.ndarray | list[np.ndarray]]:
        rng = self._rng(i)
        n_forced = num_forced(self.batch_size, self.oversample)
        small = self.small_class_slots(rng)
        data, seg = [], []
        paste_rate = min(1.0, sum(self.paste_shares.values()))
        for j in range(self.batch_size):
            if small[j] is not None:
                d, s, inside = self.sample_component(small[j], rng)
            else:
                case = self._case(self.case_ids[rng.integers(len(self.case_ids))])
                d, s, inside = self.sample(case, forced=j >= self.batch_size - n_forced, rng=rng)
            if paste_rate and rng.random() < paste_rate:
                cls = draw_class(self.paste_shares, rng)
                if not self.paste(d, s, inside, cls, rng):  # no place matches: a patch of a case that has it
                    d, s, inside = self.sample_component(cls, rng)
            data.append(d)
            seg.append(s)
        batch = {"data": np.stack(data).astype(np.float32), "seg": np.stack(seg).astype(np.int16)}
        if self.augmentation is not None:
            if self._transforms is None:
                self._transforms = build_transforms(self.augmentation, self.patch)
            # batchgenerators draws from numpy's and Python's global generators
            seed = zlib.crc32(f"{self.seed}:{i}".encode())
            np.random.seed(seed)
            random.seed(seed)
            batch = self._transforms(data=batch["data"], seg=batch["seg"].astype(np.float32))
            batch["seg"] = np.clip(np.rint(batch["seg"]), 0, None).astype(np.int16)
        target = batch["seg"]
        if self.ds_scales is not None:
            target = [downsample_seg(target, s) for s in self.ds_scales]
        return {"data": batch["data"].astype(np.float32), "target": target}


class RankShare:
    """One rank's samples (``part``, a slice of the batch axis) of every batch of ``source``: batch
    ``i`` of a run on several processes is the same global batch whatever the number of ranks
    (``training/distributed.py``); picklable like the source."""

    def __init__(self, source: BatchSource, part: slice):
        self.source, self.part = source, part

    def batch(self, i: int) -> dict[str, np.ndarray | list[np.ndarray]]:
        full = self.source.batch(i)
        target = full["target"]
        return {"data": full["data"][self.part],
                "target": [t[self.part] for t in target] if isinstance(target, list) else target[self.part]}


def class_frequencies(source: BatchSource, num_classes: int, num_batches: int = 25, regions=None,
                      ignore_label: int | None = None) -> np.ndarray:
    """Fraction of voxels of each class in ``num_batches`` batches of ``source`` (batches
    ``0 .. num_batches-1``; build the source without augmentation for speed). The patches are
    sampled as in training, foreground oversampling included, so these are the frequencies the
    network sees. With ``regions`` (``Plans.regions``): per region, the fraction of the annotated
    voxels (not ``ignore_label``) that lie in it (regions overlap: these need not sum to 1)."""
    counts = np.zeros(max(num_classes, 256), np.float64)
    for i in range(num_batches):
        target = source.batch(i)["target"]
        target = target[0] if isinstance(target, list) else target
        values = np.asarray(target).ravel()
        counts += np.bincount(values[values >= 0], minlength=len(counts))[:len(counts)]
    if regions:
        annotated = counts.sum() - (counts[ignore_label] if ignore_label is not None else 0.0)
        return np.array([counts[list(members)].sum() for _, members in regions]) / max(annotated, 1.0)
    counts = counts[:num_classes]  # not the ignore label, the highest value
    return counts / max(counts.sum(), 1.0)


def downsample_seg(seg: np.ndarray, scale: tuple[float, ...]) -> np.ndarray:
    """Nearest-neighbour downsampling of (B, 1, *spatial) by integer factors 1/scale."""
    index = [slice(None), slice(None)]
    for s in scale:
        f = int(round(1 / s))
        index.append(slice(f // 2, None, f) if f > 1 else slice(None))
    return np.ascontiguousarray(seg[tuple(index)])


def _to_torch(batch: dict) -> dict:
    target = batch["target"]
    return {
        "data": torch.from_numpy(batch["data"]),
        "target": [torch.from_numpy(t) for t in target] if isinstance(target, list) else torch.from_numpy(target),
    }


class _Iterations(torch.utils.data.Dataset):
    def __init__(self, source: BatchSource, start: int, count: int):
        self.source, self.start, self.count = source, start, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> dict:
        return _to_torch(self.source.batch(self.start + k))


def _worker_init(_):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def default_num_workers() -> int:
    """Augmentation processes when ``TrainConfig.sampling.num_workers`` is None: one per two cores (the rest
    run the network), at most 8; none on a machine with two cores or fewer, where each batch is
    built between training steps. There a worker process runs beside torch's two threads on the
    same two cores, and the threads' stalls cost more than building the batch inline (measured in
    docs/experiments/cpu_augmentation.md)."""
    cores = usable_cpus()
    return 0 if cores <= 2 else min(8, cores // 2)


def iterate(source: BatchSource, start: int, count: int, num_workers: int | None) -> Iterator[dict]:
    """Batches ``start .. start+count-1`` in order, produced by ``num_workers`` processes (0: inline)."""
    workers = default_num_workers() if num_workers is None else num_workers
    if workers == 0:
        return (_to_torch(source.batch(start + k)) for k in range(count))
    loader = torch.utils.data.DataLoader(
        _Iterations(source, start, count), batch_size=None, shuffle=False, num_workers=workers,
        worker_init_fn=_worker_init, prefetch_factor=4, persistent_workers=False,
        multiprocessing_context="fork",
    )
    return iter(loader)
