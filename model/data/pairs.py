"""Clean source pairs from the usual folder layouts of the fusion datasets (MMAIF section 4.1).

:func:`discover_pairs` recognises, for the given task:

* **synthetic** (any task) -- ``a/``, ``b/`` and optional ``gt/`` (what ``latentfuse data synth`` writes);
* **folder pairs**, matched by relative path (any depth below, e.g. ``train/``/``test/`` splits) and by
  file stem, at the root or one / two levels down (``MSRS/train/vi``):

  - VIF: LLVIP ``visible/`` + ``infrared/``, MSRS ``vi/`` + ``ir/``, M3FD ``Vis/`` + ``Ir/``, plain ``A/`` + ``B/``;
  - MEF: ``under/`` + ``over/``, MEFB-style ``A/`` + ``B/``;
  - MFF: RealMFF ``imageA/`` + ``imageB/``, ``near/`` + ``far/``, ``A/`` + ``B/``;

  a sibling ``fused/``, ``fusion/``, ``gt/`` or ``label/`` folder supplies ground truth when present;
* **SICE** (MEF) -- numbered scene folders holding an exposure sequence ``1.JPG … N.JPG`` (SICE numbers
  exposures from darkest to brightest): the first is the under-, the last the over-exposed image, and
  ``Label/<scene>.*`` is the ground truth when present;
* **scene folders** (any task) -- MEFB / MFIFB ``input/<scene>/<scene>_A.*`` + ``<scene>_B.*``: every
  sub-folder of the root (or of one folder below it, e.g. ``input/``) that holds one ``*_A`` / ``*-A``
  and one ``*_B`` / ``*-B`` image is a scene, named after the folder; the side letter and the stems are
  matched case-insensitively (MEFB ships ``Farmhouse/Farmhouse_A.png`` + ``FarmHouse_B.png`` and
  ``Sky/sKY_a.png`` + ``Sky_B.png``);
* **suffix pairs** (any task) -- ``<name>-A.*`` / ``<name>-B.*`` or ``<name>_A.*`` / ``<name>_B.*`` in one
  folder (Lytro / MFFW ``lytro-01-A.jpg``; MEFB ``<scene>_A.png``).

:func:`validate_pairs` checks partners, readability and sizes, and raises one
:class:`~latentfuse.model.errors.LatentfuseError` listing every offending file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentfuse.model.data.tasks import check_task
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_io import IMAGE_SUFFIXES

FOLDER_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "vif": (("visible", "infrared"), ("vi", "ir"), ("vis", "ir"), ("vis", "inf"), ("rgb", "thermal"), ("a", "b")),
    "mef": (("under", "over"), ("underexposed", "overexposed"), ("ue", "oe"), ("a", "b")),
    "mff": (("imagea", "imageb"), ("near", "far"), ("source_1", "source_2"), ("a", "b")),
}
GT_FOLDERS: tuple[str, ...] = ("gt", "fused", "fusion", "label", "labels", "groundtruth", "ground_truth")
SUFFIX_PAIR = re.compile(r"^(?P<stem>.+?)[-_](?P<side>[AaBb])$")
MAX_LISTED = 20


@dataclass(frozen=True)
class ImagePair:
    """One clean pair: ``a`` (visible / under-exposed / near focus), ``b`` (infrared / over / far)."""

    name: str
    a: Path
    b: Path
    gt: Path | None = None


@dataclass
class PairSet:
    task: str
    layout: str
    root: Path
    pairs: list[ImagePair]
    problems: list[str] = field(default_factory=list)  # partner problems found while matching


def _images(folder: Path) -> dict[str, Path]:
    """Relative stem (posix, no suffix) -> path, for every image file below ``folder``."""
    out: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            out[path.relative_to(folder).with_suffix("").as_posix()] = path
    return out


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _safe_name(rel: str) -> str:
    return rel.replace("/", "__")


def _match_folders(dir_a: Path, dir_b: Path, dir_gt: Path | None, prefix: str, problems: list[str]) -> list[ImagePair]:
    ia, ib = _images(dir_a), _images(dir_b)
    igt = _images(dir_gt) if dir_gt is not None else {}
    for rel in sorted(set(ia) - set(ib)):
        problems.append(f"missing partner: {ia[rel]} has no matching file in {dir_b}")
    for rel in sorted(set(ib) - set(ia)):
        problems.append(f"missing partner: {ib[rel]} has no matching file in {dir_a}")
    return [ImagePair(_safe_name(prefix + rel), ia[rel], ib[rel], igt.get(rel)) for rel in sorted(set(ia) & set(ib))]


def _folder_layout(root: Path, task: str, problems: list[str]) -> tuple[str, list[ImagePair]] | None:
    """Sibling folder pairs at the root or up to two levels below it."""
    candidates = [(root, "")]
    for sub in _subdirs(root).values():
        candidates.append((sub, sub.name + "/"))
        for sub2 in _subdirs(sub).values():
            candidates.append((sub2, f"{sub.name}/{sub2.name}/"))
    found: list[ImagePair] = []
    layout = None
    for folder, prefix in candidates:
        dirs = _subdirs(folder)
        for name_a, name_b in FOLDER_PAIRS[task]:
            if name_a in dirs and name_b in dirs:
                gt = next((dirs[g] for g in GT_FOLDERS if g in dirs), None)
                found += _match_folders(dirs[name_a], dirs[name_b], gt, prefix, problems)
                layout = layout or f"folders {dirs[name_a].name}/ + {dirs[name_b].name}/"
                break
    return (layout, found) if layout else None


def _sice_layout(root: Path, problems: list[str]) -> tuple[str, list[ImagePair]] | None:
    dirs = _subdirs(root)
    scenes = {name: path for name, path in dirs.items() if name.isdigit()}
    if not scenes:
        return None
    labels = _images(dirs["label"]) if "label" in dirs else {}
    pairs = []
    for name in sorted(scenes, key=int):
        shots = sorted(_images(scenes[name]).items(), key=lambda kv: _numeric_key(kv[0]))
        if len(shots) < 2:
            problems.append(f"missing partner: scene folder {scenes[name]} has {len(shots)} image(s), need >= 2")
            continue
        gt = labels.get(scenes[name].name)
        pairs.append(ImagePair(f"sice_{scenes[name].name}", shots[0][1], shots[-1][1], gt))
    return "SICE scene folders", pairs


def _numeric_key(rel: str) -> tuple:
    digits = re.findall(r"\d+", rel)
    return (int(digits[-1]) if digits else float("inf"), rel)


def _suffix_layout(root: Path, problems: list[str]) -> tuple[str, list[ImagePair]] | None:
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    for rel, path in _images(root).items():
        parent, _, stem = rel.rpartition("/")
        m = SUFFIX_PAIR.match(stem)
        if m:
            key = (parent, m.group("stem"))
            groups.setdefault(key, {})[m.group("side").upper()] = path
    if not groups:
        return None
    pairs = []
    for (parent, stem), sides in sorted(groups.items()):
        if "A" not in sides or "B" not in sides:
            have = sides.get("A") or sides.get("B")
            want = "B" if "A" in sides else "A"
            problems.append(f"missing partner: {have} has no '{stem}-{want}' / '{stem}_{want}' file")
            continue
        rel = f"{parent}/{stem}" if parent else stem
        pairs.append(ImagePair(_safe_name(rel), sides["A"], sides["B"], None))
    return "suffix pairs *-A / *-B", pairs


def _sides(folder: Path) -> dict[str, list[Path]]:
    """``{"A": [...], "B": [...]}``: the image files directly in ``folder`` named ``*_A`` / ``*-B`` (any case)."""
    sides: dict[str, list[Path]] = {"A": [], "B": []}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            m = SUFFIX_PAIR.match(path.stem)
            if m:
                sides[m.group("side").upper()].append(path)
    return sides


def _scene_layout(root: Path, problems: list[str]) -> tuple[str, list[ImagePair]] | None:
    """MEFB / MFIFB scene folders ``[input/]<scene>/<scene>_A|B.*``, one pair per folder."""
    for parent in [root] + list(_subdirs(root).values()):
        scenes = {d.name: _sides(d) for d in _subdirs(parent).values()}
        scenes = {name: sides for name, sides in scenes.items() if sides["A"] or sides["B"]}
        if not scenes or any(len(s["A"]) > 1 or len(s["B"]) > 1 for s in scenes.values()):
            continue  # several pairs in one folder: the plain suffix layout
        pairs = []
        for name, sides in sorted(scenes.items()):
            if sides["A"] and sides["B"]:
                pairs.append(ImagePair(name, sides["A"][0], sides["B"][0], None))
            else:
                have = (sides["A"] or sides["B"])[0]
                problems.append(f"missing partner: scene folder {have.parent} has {have.name} but no "
                                f"*_{'B' if sides['A'] else 'A'} image")
        rel = parent.relative_to(root).as_posix()
        return f"scene folders {'' if rel == '.' else rel + '/'}<scene>/<scene>_A|B", pairs
    return None


def _synthetic_layout(root: Path, problems: list[str]) -> tuple[str, list[ImagePair], str | None] | None:
    dirs = _subdirs(root)
    if "a" not in dirs or "b" not in dirs or not ((root / "synth.json").is_file() or "gt" in dirs):
        return None
    task = None
    if (root / "synth.json").is_file():
        try:
            task = json.loads((root / "synth.json").read_text()).get("task")
        except (OSError, ValueError) as err:
            raise LatentfuseError(f"cannot read {root / 'synth.json'}: {err}") from None
    pairs = _match_folders(dirs["a"], dirs["b"], dirs.get("gt"), "", problems)
    return "synthetic a/ + b/ + gt/", pairs, task


def discover_pairs(root: str | os.PathLike, task: str) -> PairSet:
    """Find the clean pairs of ``task`` under ``root`` (see module docstring for the layouts)."""
    task = check_task(task)
    root = Path(root)
    if not root.is_dir():
        raise LatentfuseError(f"dataset folder not found: {root}")
    problems: list[str] = []
    synth = _synthetic_layout(root, problems)
    if synth is not None:
        layout, pairs, synth_task = synth
        if synth_task and synth_task != task:
            raise LatentfuseError(f"{root} holds synthetic {synth_task} pairs, but --task is {task}")
        return PairSet(task, layout, root, pairs, problems)
    for finder in (lambda: _folder_layout(root, task, problems),
                   lambda: _sice_layout(root, problems) if task == "mef" else None,
                   lambda: _scene_layout(root, problems),
                   lambda: _suffix_layout(root, problems)):
        found = finder()
        if found is not None:
            return PairSet(task, found[0], root, found[1], problems)
    expected = ", ".join(f"{a}/+{b}/" for a, b in FOLDER_PAIRS[task])
    extra = "; SICE numbered scene folders" if task == "mef" else ""
    raise LatentfuseError(
        f"no {task} image pairs found in {root}: expected folder pairs ({expected}){extra}; "
        f"scene folders <scene>/<scene>_A.* + <scene>_B.*; files named <name>-A.* / <name>-B.*; or a synthetic folder with a/, b/ (latentfuse data synth)"
    )


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; raises on unreadable or corrupt files."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
        return (shape[1], shape[0]) if len(shape) == 2 or shape[-1] in (1, 3, 4) else (shape[2], shape[1])
    from PIL import Image

    with Image.open(path) as img:
        size = img.size
        img.verify()  # PNG CRCs, truncated headers
    return size


def _list(problems: list[str]) -> str:
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"  {shown}{more}"


def validate_pairs(pairset: PairSet, check_sizes: bool = True) -> PairSet:
    """Check every pair: partner present, files readable, a / b / gt sizes equal (unless ``check_sizes`` is
    off: a caller that resamples B to A's size). Raises listing all."""
    problems = list(pairset.problems)
    for pair in pairset.pairs:
        sizes: dict[str, tuple[int, int]] = {}
        for role, path in (("a", pair.a), ("b", pair.b), ("gt", pair.gt)):
            if path is None:
                continue
            try:
                sizes[role] = image_size(path)
            except Exception as err:
                problems.append(f"unreadable: {path}: {type(err).__name__}: {err}")
        if "a" in sizes and check_sizes:
            for role in ("b", "gt"):
                if role in sizes and sizes[role] != sizes["a"]:
                    path = pair.b if role == "b" else pair.gt
                    problems.append(f"size mismatch: {pair.a} is {sizes['a'][0]}x{sizes['a'][1]} but "
                                    f"{path} is {sizes[role][0]}x{sizes[role][1]} (--resize resamples B to A's size "
                                    "where the command has it)")
    if problems:
        raise LatentfuseError(
            f"{len(problems)} problem(s) in {pairset.task} dataset {pairset.root} ({pairset.layout}):\n"
            + _list(problems)
        )
    if not pairset.pairs:
        raise LatentfuseError(f"no complete {pairset.task} pairs in {pairset.root} ({pairset.layout})")
    return pairset


def load_pair(pair: ImagePair, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a validated pair as float32 [0, 1]. VIF infrared is reduced to one channel (IR files are
    often stored as 3 identical channels); MEF / MFF gray partners of an RGB image are replicated."""
    from latentfuse.model.image_io import read_image
    from latentfuse.model.image_processing.color import to_gray, to_rgb

    a, b = read_image(pair.a), read_image(pair.b)
    gt = read_image(pair.gt) if pair.gt is not None else None
    if task == "vif":
        b = to_gray(b)
    elif a.ndim != b.ndim:
        a, b = to_rgb(a), to_rgb(b)
    return a, b, gt
