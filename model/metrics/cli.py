"""``latentfuse metrics``: fusion metrics of one fused image against its two sources."""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "metrics",
        help="fusion metrics (VIF, Qabf, Qcv, Qcb, EN, SD, SF, AG, EI, CE, MI, SSIM, PSNR, RMSE) of a fused image",
        description="Score a fused image against its two source images. Images are read as [0, 1] and "
        "scored on the [0, 255] scale; 8-bit files are scored exactly as the VIFB MATLAB code does.",
    )
    p.add_argument("--a", required=True, help="first source image (e.g. visible)")
    p.add_argument("--b", required=True, help="second source image (e.g. infrared)")
    p.add_argument("--fused", required=True, help="fused image")
    p.add_argument(
        "--convention",
        choices=("corrected", "vifb"),
        default="corrected",
        help="'vifb' reproduces the VIFB benchmark's MATLAB values, quirks included (default: corrected)",
    )
    p.add_argument("--names", help="comma-separated metric names (default: all; 'vif_sb' is also available)")
    p.add_argument("--json", action="store_true", help="print a JSON object (NaN / inf as null)")
    p.set_defaults(func=run_metrics)


def load_255(path: str):
    """Read an image with ``model.image_io.read_image`` and scale it to [0, 255].

    Values within 1e-3 of an integer everywhere (every 8-bit file) are snapped to it, undoing the
    float32 round trip through [0, 1] so that 8-bit inputs are scored exactly.
    """
    import numpy as np

    from latentfuse.model.image_io import read_image

    x = read_image(path).astype(np.float64) * 255.0
    snapped = np.round(x)
    return snapped if np.abs(x - snapped).max() < 1e-3 else x


def run_metrics(args: argparse.Namespace) -> int:
    from latentfuse.model.metrics import compute, resolve_names

    names = resolve_names(args.names)  # fail on a bad name before reading any image
    values = compute(load_255(args.a), load_255(args.b), load_255(args.fused), names, args.convention)
    if args.json:
        print(json.dumps({k: (v if math.isfinite(v) else None) for k, v in values.items()}, indent=2))
        return 0
    print(f"convention: {args.convention}")
    for name, value in values.items():
        print(f"{name:>6}  {value:.6g}")
    return 0
