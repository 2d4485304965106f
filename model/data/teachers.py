"""Teacher fusion methods that produce pseudo-label candidates (FusionFM: "fusion results from multiple
models as priors"; MMAIF used pre-trained SwinFusion / DeFuse, which cannot be downloaded here).

Every teacher is ``teacher(a, b, sample=None) -> fused``: float [0, 1] inputs HxW or HxWx3 (VIF: ``a``
visible, ``b`` infrared), output RGB when either input has colour, else gray. The classical methods:

* ``average``    -- pixel average (the reference every fusion paper beats);
* ``laplacian``  -- Laplacian-pyramid fusion, detail coefficients by max-abs selection, base averaged
  (Burt & Kolczynski, ICCV 1993);
* ``mertens``    -- exposure fusion (Mertens, Kautz & Van Reeth, PG 2007): contrast·saturation·
  well-exposedness weights blended in a Laplacian pyramid;
* ``gff``        -- guided filtering based fusion (Li, Kang & Hu, TIP 2013);
* ``tif``        -- two-scale fusion with saliency weights (Bavirisetti & Dhuli, Infrared Phys. 2016);
* ``focus``      -- multi-focus selection by the sum-modified-Laplacian focus measure (Nayar &
  Nakagawa 1994) with consistency verification and guided-filter refinement of the decision map.

Learned networks plug in as :class:`FolderTeacher` (precomputed ``<folder>/<sample>.png``). Teachers are
kept in a registry by name (:func:`register_teacher`, :func:`get_teacher`, :func:`teachers_for`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from latentfuse.model.data.tasks import TASKS, check_task
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing import pyramid as P
from latentfuse.model.image_processing.color import fuse_luma, luma, rgb_to_ycbcr, to_rgb, ycbcr_to_rgb
from latentfuse.model.image_processing.filters import box_filter, gaussian, guided_filter

FuseFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- classical rules on gray images --------------------------------------------------------------

def _average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 0.5 * (a + b)


def _laplacian_maxabs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    levels = P.max_levels(a.shape)
    la, lb = P.laplacian_pyramid(a, levels), P.laplacian_pyramid(b, levels)
    fused = [np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(la[:-1], lb[:-1])]
    fused.append(0.5 * (la[-1] + lb[-1]))
    return P.collapse(fused)


def _radius(shape: tuple[int, ...], r: int, frac: float = 0.25) -> int:
    """Paper radii are for ~512 px images; keep windows inside small images."""
    return max(1, min(int(r), int(min(shape[:2]) * frac)))


def _gff(a: np.ndarray, b: np.ndarray, r1: int = 45, eps1: float = 0.3, r2: int = 7,
         eps2: float = 1e-6) -> np.ndarray:
    """Li et al. 2013: two-scale split (31x31 mean), Laplacian-saliency argmax maps refined by guided
    filtering with the sources as guides (r1, eps1 for the base layer; r2, eps2 for the detail layer)."""
    srcs = [a, b]
    bases = [box_filter(s, _radius(s.shape, 15)) for s in srcs]
    details = [s - base for s, base in zip(srcs, bases)]
    sal = [gaussian(np.abs(ndimage.laplace(s)), 5.0) for s in srcs]
    pick = (sal[0] >= sal[1]).astype(np.float64)
    masks = [pick, 1.0 - pick]
    wb = [guided_filter(s, m, _radius(s.shape, r1), eps1) for s, m in zip(srcs, masks)]
    wd = [guided_filter(s, m, _radius(s.shape, r2), eps2) for s, m in zip(srcs, masks)]
    wb = [np.clip(w, 0, None) for w in wb]
    wd = [np.clip(w, 0, None) for w in wd]
    nb, nd = wb[0] + wb[1] + 1e-12, wd[0] + wd[1] + 1e-12
    return (wb[0] * bases[0] + wb[1] * bases[1]) / nb + (wd[0] * details[0] + wd[1] * details[1]) / nd


def _tif(a: np.ndarray, b: np.ndarray, mean_size: int = 35, median_size: int = 3) -> np.ndarray:
    """Bavirisetti & Dhuli 2016: base = 35x35 mean, detail weights from visual saliency
    |global mean - 3x3 median| of each source; bases averaged."""
    r = _radius(a.shape, mean_size // 2)
    bases = [box_filter(s, r) for s in (a, b)]
    details = [s - base for s, base in zip((a, b), bases)]
    sal = [np.abs(s.mean() - ndimage.median_filter(s, size=median_size, mode="reflect")) for s in (a, b)]
    den = sal[0] + sal[1]
    wa = np.where(den > 1e-9, sal[0] / np.maximum(den, 1e-9), 0.5)
    return 0.5 * (bases[0] + bases[1]) + wa * details[0] + (1 - wa) * details[1]


def sum_modified_laplacian(image: np.ndarray, step: int = 1, radius: int = 3) -> np.ndarray:
    """SML focus measure (Nayar & Nakagawa 1994): windowed sum of |2I - I(x-s) - I(x+s)| +
    |2I - I(y-s) - I(y+s)|."""
    img = np.pad(np.asarray(image, np.float64), step, mode="reflect")
    c = img[step:-step, step:-step]
    ml = (np.abs(2 * c - img[step:-step, :-2 * step] - img[step:-step, 2 * step:])
          + np.abs(2 * c - img[:-2 * step, step:-step] - img[2 * step:, step:-step]))
    return box_filter(ml, radius) * (2 * radius + 1) ** 2


def focus_decision(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Soft decision map (1 = take ``a``): SML comparison, consistency verification by a majority
    filter and removal of small regions, then guided-filter refinement along image edges."""
    ga, gb = luma(a), luma(b)
    h, w = ga.shape
    decision = sum_modified_laplacian(ga) >= sum_modified_laplacian(gb)
    # Majority (consistency) filter: a pixel follows the choice of most of its neighbourhood.
    decision = box_filter(decision.astype(np.float64), _radius(ga.shape, 5, 0.05)) > 0.5
    from skimage.morphology import remove_small_holes, remove_small_objects

    min_area = max(4, int(0.01 * h * w))
    decision = remove_small_objects(decision, max_size=min_area)
    decision = remove_small_holes(decision, max_size=min_area)
    return np.clip(guided_filter(0.5 * (ga + gb), decision.astype(np.float64), _radius(ga.shape, 4), 0.01), 0, 1)


def _focus_fuse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = focus_decision(a, b)
    if a.ndim == 3 or b.ndim == 3:
        a, b = to_rgb(a, None), to_rgb(b, None)
        w = w[..., None]
    return w * a + (1 - w) * b


def mertens(a: np.ndarray, b: np.ndarray, wc: float = 1.0, ws: float = 1.0, we: float = 1.0,
            sigma: float = 0.2) -> np.ndarray:
    """Mertens et al. 2007: W = C^wc · S^ws · E^we (contrast = |Laplacian| of gray, saturation = std
    over RGB, well-exposedness = Π_c exp(-(I_c - 0.5)² / 2σ²)), normalised, Laplacian-pyramid blend."""
    colour = a.ndim == 3 or b.ndim == 3
    srcs = [to_rgb(a, None), to_rgb(b, None)] if colour else [a, b]
    weights = []
    for s in srcs:
        gray = luma(s)
        contrast = np.abs(ndimage.laplace(gray))
        if colour:
            saturation = s.std(axis=-1)
            exposed = np.prod(np.exp(-((s - 0.5) ** 2) / (2 * sigma**2)), axis=-1)
        else:
            saturation = np.ones_like(gray)
            exposed = np.exp(-((gray - 0.5) ** 2) / (2 * sigma**2))
        weights.append(contrast**wc * saturation**ws * exposed**we + 1e-12)
    total = weights[0] + weights[1]
    weights = [w / total for w in weights]
    levels = P.max_levels(srcs[0].shape)
    fused = None
    for s, w in zip(srcs, weights):
        lap = P.laplacian_pyramid(s, levels)
        gw = P.gaussian_pyramid(w, levels)
        blended = [l * (g[..., None] if colour else g) for l, g in zip(lap, gw)]
        fused = blended if fused is None else [f + x for f, x in zip(fused, blended)]
    return np.clip(P.collapse(fused), 0, 1)


# --- the registry ---------------------------------------------------------------------------------

@dataclass
class Teacher:
    """A named fusion method and the tasks it is a sensible candidate for."""

    name: str
    fuse: Callable[..., np.ndarray]
    tasks: tuple[str, ...] = TASKS
    description: str = ""
    needs_sample: bool = False

    def __call__(self, a: np.ndarray, b: np.ndarray, sample: str | None = None) -> np.ndarray:
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        if a.shape[:2] != b.shape[:2]:
            raise LatentfuseError(f"teacher {self.name}: source sizes differ {a.shape[:2]} vs {b.shape[:2]}")
        out = self.fuse(a, b, sample) if self.needs_sample else self.fuse(a, b)
        return np.clip(np.asarray(out, np.float64), 0, 1).astype(np.float32)


def _luma_teacher(rule: FuseFn) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda a, b: fuse_luma(a, b, rule)


class FolderTeacher(Teacher):
    """Precomputed outputs of a learned fusion network: ``<folder>/<sample>.{png,jpg,tif,...}``.

    A gray output for a colour visible image (VIF networks usually fuse Y only) is recoloured with the
    visible image's chroma, as those networks' own scripts do.
    """

    SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

    def __init__(self, name: str, folder: str | os.PathLike, tasks: tuple[str, ...] = TASKS):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LatentfuseError(f"teacher {name}: folder not found: {self.folder}")
        super().__init__(name=name, fuse=self._load, tasks=tasks,
                         description=f"precomputed outputs in {self.folder}", needs_sample=True)

    def path_for(self, sample: str) -> Path:
        for suffix in self.SUFFIXES:
            path = self.folder / f"{sample}{suffix}"
            if path.is_file():
                return path
        raise LatentfuseError(f"teacher {self.name}: no output for sample {sample!r} in {self.folder} "
                              f"(expected {sample}.png or another image suffix)")

    def _load(self, a: np.ndarray, b: np.ndarray, sample: str | None) -> np.ndarray:
        from latentfuse.model.image_io import read_image

        if sample is None:
            raise LatentfuseError(f"teacher {self.name} reads precomputed outputs and needs the sample name")
        path = self.path_for(sample)
        out = read_image(path).astype(np.float64)
        if out.shape[:2] != a.shape[:2]:
            raise LatentfuseError(f"teacher {self.name}: {path} is {out.shape[1]}x{out.shape[0]}, "
                                  f"sources are {a.shape[1]}x{a.shape[0]}")
        colour_src = a if a.ndim == 3 else (b if b.ndim == 3 else None)
        if out.ndim == 2 and colour_src is not None:
            ycc = rgb_to_ycbcr(colour_src)
            ycc[..., 0] = out
            out = ycbcr_to_rgb(ycc)
        return out


_REGISTRY: dict[str, Teacher] = {}


def register_teacher(teacher: Teacher, overwrite: bool = False) -> Teacher:
    """Add a teacher to the registry (e.g. a :class:`FolderTeacher` for a learned network)."""
    if teacher.name in _REGISTRY and not overwrite:
        raise LatentfuseError(f"a teacher named {teacher.name!r} is already registered")
    _REGISTRY[teacher.name] = teacher
    return teacher


def get_teacher(name: str) -> Teacher:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LatentfuseError(f"unknown teacher {name!r}: registered teachers are {', '.join(_REGISTRY)}") from None


def teacher_names() -> list[str]:
    return list(_REGISTRY)


def teachers_for(task: str, names: list[str] | None = None, extra: list[Teacher] | tuple = ()) -> list[Teacher]:
    """The registered teachers for ``task`` (or exactly ``names``), plus ``extra`` plug-in teachers."""
    task = check_task(task)
    chosen = [get_teacher(n) for n in names] if names else [t for t in _REGISTRY.values() if task in t.tasks]
    return chosen + list(extra)


def run_teachers(a: np.ndarray, b: np.ndarray, teachers: list[Teacher], sample: str | None = None) -> dict[str, np.ndarray]:
    """Candidate labels ``{teacher name: fused image}`` for one clean pair."""
    return {t.name: t(a, b, sample) for t in teachers}


for _t in (
    Teacher("average", _luma_teacher(_average), TASKS, "pixel average of the luminance"),
    Teacher("laplacian", _luma_teacher(_laplacian_maxabs), TASKS, "Laplacian pyramid, max-abs details"),
    Teacher("gff", _luma_teacher(_gff), TASKS, "guided filtering fusion (Li et al. 2013)"),
    Teacher("tif", _luma_teacher(_tif), ("vif",), "two-scale saliency fusion (Bavirisetti & Dhuli 2016)"),
    Teacher("mertens", mertens, ("mef", "mff"), "exposure fusion (Mertens et al. 2007)"),
    Teacher("focus", _focus_fuse, ("mff",), "sum-modified-Laplacian focus selection"),
):
    register_teacher(_t)
