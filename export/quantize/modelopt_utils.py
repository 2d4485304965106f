"""NVIDIA ModelOpt, kept apart and imported lazily (as demoDiffusion keeps utils_modelopt.py): the install check,
its version, the quantization config of a set of layers."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterable

from latentfuse.model.errors import MissingDependencyError


def require_modelopt(precision: str = "int8"):
    """``modelopt.torch.quantization``, or a one-line error saying how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # "transformers X is not tested with modelopt ..."
            import modelopt.torch.quantization as mtq
    except ImportError:
        raise MissingDependencyError("nvidia-modelopt", extra="quant",
                                     purpose=f"--precision {precision} (post-training quantization)") from None
    return mtq


def modelopt_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return None


def quant_config(precision: str, layers: Iterable[str]) -> dict:
    """ModelOpt config quantizing the weights and inputs of exactly ``layers`` (``max`` calibration)."""
    if precision == "int8":
        weight, act = {"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}
    else:
        weight, act = {"num_bits": (4, 3), "axis": None}, {"num_bits": (4, 3), "axis": None}
    entries = [{"quantizer_name": "*", "enable": False}]
    for layer in layers:
        entries.append({"quantizer_name": f"{layer}.weight_quantizer", "cfg": dict(weight)})
        entries.append({"quantizer_name": f"{layer}.input_quantizer", "cfg": dict(act)})
    return {"quant_cfg": entries, "algorithm": "max"}


def quiet_modelopt():
    """ModelOpt prints a line per detected MoE and a quantizer count; the CLI shows its own progress."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack
