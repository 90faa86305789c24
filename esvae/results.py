"""The result files of a run: one schema each, one writer, one reader.

Every JSON file a stage writes is checked against its schema when written (:func:`write_result`:
a writer that drifts from the schema fails at once, in the tests) and when read back
(:func:`read_result`: a truncated, foreign or hand-edited file is refused with its path and the
field that is wrong). The report, the MLflow tracker and the command line read through
:func:`read_result` only.

=========  ===============================  ====================================================
kind       file                             written by
=========  ===============================  ====================================================
train      ``train/metrics.json``           ``esvae train`` (:mod:`esvae.train`)
config     ``train/config.json``            ``esvae train``: the resolved configuration
evaluate   ``evaluate/metrics.json``        ``esvae evaluate`` (:mod:`esvae.evaluate`)
probe      ``probe/probes.json``            ``esvae probe`` (:mod:`esvae.probes`)
fad        ``fad/<dataset>/metrics.json``   ``esvae train-fad-autoencoder`` (:mod:`esvae.metrics.fad`)
data       ``data/<dataset>.json``          ``esvae prepare-data``
preset     ``results/<preset>/config.json`` the workflow: the resolved preset
=========  ===============================  ====================================================

A schema maps each key to its kind: a Python type, :data:`NUMBER` (a finite int or float, or
``null`` where a metric was refused, its reason recorded beside it), a nested schema (a JSON
object), or ``[schema]`` (a list whose items follow ``schema``). A key written ``"?key"`` may be
absent (files of earlier versions); when present it is checked. Keys a schema does not name are
allowed (extra detail), so a schema lists every key a reader relies on.

The scalar metrics of ``evaluate/metrics.json`` are named once, in :data:`METRICS`: the
``--metrics`` option, the file's key, the report's column and the MLflow metric all come from it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from .errors import EsvaeError
from .files import write_json

NUMBER = "number"


class ResultFileError(EsvaeError):
    """A result file is missing, truncated or not of its kind."""


@dataclass(frozen=True)
class Metric:
    """One entry of ``evaluate/metrics.json``."""

    option: str  # its name in ``esvae evaluate --metrics``
    key: str  # its key in the file
    label: str  # how tables and logs name it
    column: str = ""  # the report's column ("" = the key); scalar metrics only
    tracked: str = ""  # the MLflow metric ("" = the key); scalar metrics only
    scalar: bool = True  # an object with a ``value`` (None where refused)

    @property
    def column_name(self) -> str:
        return self.column or self.key

    @property
    def tracked_name(self) -> str:
        return self.tracked or self.key


METRICS: Tuple[Metric, ...] = (
    Metric("mse", "reconstruction_mse", "MSE", column="mse", tracked="eval_mse"),
    Metric("fid", "fid", "FID (torch-fidelity)"),
    Metric("kid", "kid", "KID"),
    Metric("is", "inception_score", "IS"),
    Metric("fid_clean", "fid_clean", "FID-clean (paper's protocol)"),
    Metric("fad", "fad", "FAD (our AE)"),
    Metric("fad_published", "fad_published", "FAD (authors' AE)"),
    Metric("params", "parameters", "trainable parameters", scalar=False),
    Metric("spikes", "spike_costs", "firing rates, synaptic operations, energy", scalar=False),
    Metric("sampling", "sampling_time", "generation time", scalar=False),
)
SCALAR_METRICS: Tuple[Metric, ...] = tuple(m for m in METRICS if m.scalar)
METRIC_OPTIONS: Tuple[str, ...] = tuple(m.option for m in METRICS)


def metric(option: str) -> Metric:
    return next(m for m in METRICS if m.option == option)


_VALUE = {"value": NUMBER}
_SAMPLED = {"value": NUMBER, "?name": str}  # FID@N-style metrics name N; refused ones carry "refused"
_RUN = {"model": str, "dataset": str, "?data_label": str}  # every per-run file says what it is about

# Required keys are the ones a reader relies on; "?" keys are written by today's writers and checked
# whenever present (files of earlier versions may lack them).
SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "train": {
        **_RUN,
        "epochs": int,
        "train_images": int,
        "parameters": int,
        "reconstruction_mse": {"value": NUMBER, "n": int, "split": str},
        "baseline_mean_image_mse": {"value": NUMBER, "?n": int},
        "?timesteps": int,
        "?seed": int,
        "?batch_size": int,
        "?steps": int,
        "?train_seconds": NUMBER,
        "?lr": NUMBER,
        "?lr_rule": str,
        "?device": str,
        "?device_name": str,
        "?code_version": str,
    },
    "config": {
        **_RUN,
        "model_config": dict,
        "train_config": dict,
        "?device": str,
        "?torch_threads": int,
        "?parameters": int,
        "?train_images": int,
        "?test_images": int,
        "?code_version": str,
    },
    "evaluate": {
        **_RUN,
        "?checkpoint": str,
        "?timesteps": int,
        "?seed": int,
        "?code_version": str,
        "?reconstruction_mse": {"value": NUMBER, "n": int, "split": str},
        "?fid": _SAMPLED,
        "?kid": _SAMPLED,
        "?inception_score": _VALUE,
        "?fid_clean": _SAMPLED,
        "?fad": _SAMPLED,
        "?fad_published": _VALUE,
        "?parameters": {"total": int},
        "?spike_costs": dict,
        "?sampling_time": dict,
    },
    "probe": {
        **_RUN,
        "?checkpoint": str,
        "?timesteps": int,
        "?code_version": str,
        "information_retention": {
            "linear_probe": _VALUE,
            "mse_sampled": _VALUE,
            "mse_deterministic": _VALUE,
        },
        "?decoder_robustness": dict,  # its rows are null for the ANN VAE (no spike train to perturb)
    },
    "fad": {"dataset": str, "data_label": str, "code_dim": int, "training": dict, "test_stats": dict},
    "data": {"dataset": str, "label": str, "splits": dict},
    "preset": {"preset": str},
}


_JSON_NAMES = {NUMBER: "a finite number", dict: "an object", list: "a list", str: "a string", bool: "true or false"}


def _kind_name(kind: Any) -> str:
    return _JSON_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _check(value: Any, schema: Mapping[str, Any], where: str) -> None:
    for key, kind in schema.items():
        optional, key = key.startswith("?"), key.lstrip("?")
        if key not in value:
            if optional:
                continue
            raise ValueError(f"missing {where}{key}")
        _check_item(value[key], kind, f"{where}{key}")


def _check_item(item: Any, kind: Any, where: str) -> None:
    if isinstance(kind, Mapping):
        if not isinstance(item, dict):
            raise ValueError(f"{where} is {type(item).__name__}, expected an object")
        _check(item, kind, f"{where}.")
    elif isinstance(kind, list):
        if not isinstance(item, list):
            raise ValueError(f"{where} is {type(item).__name__}, expected a list")
        for i, element in enumerate(item):
            _check_item(element, kind[0], f"{where}[{i}]")
    elif kind == NUMBER:
        if item is not None and (
            isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item)
        ):
            raise ValueError(f"{where} is {item!r}, expected {_kind_name(kind)}")
    elif kind is int and (isinstance(item, bool) or not isinstance(item, int)):
        raise ValueError(f"{where} is {item!r}, expected an integer")
    elif not isinstance(item, kind):
        raise ValueError(f"{where} is {type(item).__name__}, expected {_kind_name(kind)}")


def check_result(value: Any, kind: str) -> None:
    """Raise ValueError naming the first field of ``value`` that does not follow ``kind``'s schema."""
    if not isinstance(value, dict):
        raise ValueError(f"holds a JSON {type(value).__name__}, expected an object")
    _check(value, SCHEMAS[kind], "")


def write_result(path: os.PathLike, kind: str, value: Dict[str, Any]) -> None:
    """Write ``value`` as the ``kind`` result file at ``path`` (atomically), after checking it: a
    writer that produces a file its readers would refuse fails here instead."""
    try:
        check_result(json.loads(json.dumps(value)), kind)  # as it will read back (tuples as lists)
    except ValueError as exc:
        raise ValueError(f"refusing to write {path} as a {kind} result file: {exc}") from None
    write_json(path, value)


def read_result(path: os.PathLike, kind: str) -> dict:
    """Read the ``kind`` result file at ``path`` and check it; a missing, truncated, foreign or
    hand-edited file raises :class:`ResultFileError` naming it, the wrong field and what to do."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
        check_result(value, kind)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ResultFileError(
            f"{path} is not a valid {kind} result file ({exc}); delete it and re-run the job that writes it"
        ) from None
    return value
