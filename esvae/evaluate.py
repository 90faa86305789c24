"""``python -m esvae evaluate``: the metrics of a trained checkpoint, each with its conditions.

Writes ``metrics.json`` and ``evaluate.log`` in ``out_dir``. Metrics (``--metrics``, default all):

* ``mse``      reconstruction MSE on the test split, averaged per image, eval mode
* ``fid``, ``kid``  torch-fidelity, ``num_samples`` generated images vs the reference split (the test
  split; CelebA: the validation split, as the paper did), labelled ``FID@N`` / ``KID@N``
* ``is``       torch-fidelity's Inception Score of the generated images; refused (recorded with the
  reason, never a number from a substitute network) when the weights lack the classifier head
* ``fid_clean`` FID in the paper's protocol (clean-fid's PIL-bicubic resize to 299x299, the same
  Inception pool3 features; :mod:`esvae.metrics.clean_fid`), beside torch-fidelity's FID
* ``fad``      Frechet Autoencoder Distance with the dataset's FAD autoencoder (``fad_autoencoder``,
  from ``train-fad-autoencoder``); refused, with the reason, when none is given
* ``fad_published`` FAD with the FSVAE authors' published autoencoder and test statistics
  (``fad_published_autoencoder`` + ``fad_published_stats``, or a ``fad_published_dir`` laid out like
  their ``metrics/`` folder); refused, with the reason, without them
* ``params``   trainable parameters of the modules in use
* ``spikes``   firing rate per spiking layer, synaptic operations, MACs and the 45 nm energy estimate
  per image (:func:`esvae.metrics.spikes.spike_costs`) on up to 100 test images
* ``sampling`` wall time per generated image (:func:`esvae.metrics.time_sampling`)

Every entry records N, split, and for Inception metrics the weights source and torch-fidelity
version. The latent noise and generated images come from a generator seeded with ``seed`` (default:
the one the training run evaluated with; with the default batch size, the run's own, the MSE
repeats the run's number). Without Inception weights, FID/KID/IS are recorded as refused with the
reason and the other metrics are still computed; ``metrics.json`` is rewritten after each metric.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .checkpoints import code_version, load_checkpoint
from .data import DataSource, ImageSplit, data_source, first_n, load_split, to_model_range
from .device import resolve_device
from .errors import CheckpointError, ConfigError, MetricUnavailableError
from .logs import log_to_file
from .models.base import VAEModel
from .models.registry import count_parameters
from .results import METRIC_OPTIONS, metric, write_result
from .train import EVAL_SEED_OFFSET
from .train import evaluate as evaluate_terms

log = logging.getLogger(__name__)

METRICS = METRIC_OPTIONS  # the --metrics names, from the registry in esvae.results
INCEPTION_METRICS = ("fid", "kid", "is", "fid_clean")
RESULT_KEYS = {m: metric(m).key for m in INCEPTION_METRICS}  # their metrics.json keys


def parse_metrics(text: str) -> List[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return names


def generate(model, n: int, batch_size: int, device: torch.device, seed: int, progress: bool = False) -> torch.Tensor:
    """``n`` generated images in [-1, 1] on the CPU, in batches, from one seeded generator."""
    from tqdm import tqdm

    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="generating", unit="batch", disable=not progress):
            out.append(model.sample(min(batch_size, n - start), generator=gen).cpu())
    return torch.cat(out)


@dataclass
class OpenedRun:
    device: torch.device
    model: VAEModel  # in eval mode, on ``device``
    ckpt: Dict
    source: DataSource
    seed: int  # the training run's evaluation seed unless given
    train_config: Dict


def open_run(checkpoint: os.PathLike, device: str = "auto", seed: Optional[int] = None) -> OpenedRun:
    """Load a training run's checkpoint for evaluation: model, data source and generator seed."""
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(checkpoint, map_location=dev)
    run_config = ckpt["run_config"]  # the run's config.json; its "train_config" the optimiser and loop settings
    train_config = run_config.get("train_config", {})
    if seed is None:  # the same generator seed as the training run's own evaluation
        seed = train_config.get("seed", 0) + EVAL_SEED_OFFSET
    # a checkpoint saved outside a training run has no run config: its setting's own dataset then
    source = data_source(run_config.get("dataset", ckpt["setting"]))
    return OpenedRun(dev, model.to(dev).eval(), ckpt, source, seed, train_config)


@dataclass
class _Evaluation:
    """One evaluation in progress: the opened run, what was asked, the inputs opened before the
    output folder exists, and the result so far (rewritten after every metric)."""

    run: OpenedRun
    checkpoint: str
    out_dir: Path
    wanted: List[str]
    num_samples: int
    batch_size: int
    test_subset: int
    reference_subset: int
    data_root: Optional[os.PathLike]
    download: bool
    cache_dir: Optional[os.PathLike]
    progress: bool
    test_full: Optional[ImageSplit] = None  # loaded when a metric reads the test split
    fad_model: Any = None  # our FAD autoencoder and its record, when given
    fad_record: Optional[Dict] = None
    published: Optional[Dict] = None  # the authors' FAD files (or the reason they are missing)
    weights: Any = None  # the Inception weights, or None with weights_refusal saying why
    weights_refusal: Optional[str] = None
    generated: Optional[torch.Tensor] = None  # num_samples images in [-1, 1], CPU, once generated
    result: Dict = field(default_factory=dict)

    def save(self) -> None:  # after every metric: a late failure keeps what was computed
        write_result(self.out_dir / "metrics.json", "evaluate", self.result)

    @property
    def images(self) -> torch.Tensor:
        """The generated images (generated before any metric that reads them)."""
        assert self.generated is not None
        return self.generated

    @functools.cached_property
    def images_u8(self) -> torch.Tensor:
        """The generated images as uint8 [0, 255], converted once for IS, FID and KID."""
        from .metrics.fidelity import to_uint8

        return to_uint8(self.images)

    def fidelity(self, reference: Optional[torch.Tensor], **which) -> Dict:
        """torch-fidelity on the generated images (``which``: fid/kid/isc flags, reference_name)."""
        from .metrics.fidelity import fidelity_metrics

        return fidelity_metrics(
            self.images_u8,
            reference,
            self.weights,
            device=self.run.device,
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
            verbose=self.progress,
            **which,
        )


def evaluate_checkpoint(
    checkpoint: os.PathLike,
    out_dir: os.PathLike,
    *,
    metrics: Sequence[str] = METRICS,
    num_samples: int = 5000,
    test_subset: int = 0,
    reference_subset: int = 0,
    batch_size: Optional[int] = None,
    inception_weights: Optional[os.PathLike] = None,
    data_root: Optional[os.PathLike] = None,
    download: bool = False,
    device: str = "auto",
    seed: Optional[int] = None,
    cache_dir: Optional[os.PathLike] = None,
    fad_autoencoder: Optional[os.PathLike] = None,
    fad_published_autoencoder: Optional[os.PathLike] = None,
    fad_published_stats: Optional[os.PathLike] = None,
    fad_published_dir: Optional[os.PathLike] = None,
    progress: Optional[bool] = None,
) -> Dict:
    """Evaluate a checkpoint of this project; returns (and writes) the metrics dict."""
    import sys

    run = open_run(checkpoint, device, seed)
    if batch_size is None:  # the latent noise is drawn per batch: the run's batch size repeats its MSE
        batch_size = run.train_config.get("batch_size", 100)
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    ev = _Evaluation(
        run,
        str(checkpoint),
        Path(out_dir),
        list(dict.fromkeys(metrics)),
        num_samples,
        batch_size,
        test_subset,
        reference_subset,
        data_root,
        download,
        cache_dir,
        sys.stderr.isatty() if progress is None else progress,
    )
    # Everything that can fail on input comes before the output folder exists.
    _open_inputs(
        ev, inception_weights, fad_autoencoder, fad_published_autoencoder, fad_published_stats, fad_published_dir
    )
    ev.out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(ev.out_dir, "evaluate.log"):
        _start(ev)
        _measure(ev)
        write_result(ev.out_dir / "metrics.json", "evaluate", ev.result)
        log.info("wrote %s", ev.out_dir / "metrics.json")
        return ev.result


def _open_inputs(
    ev: _Evaluation, inception_weights, fad_autoencoder, published_autoencoder, published_stats, published_dir
):
    """The test split, the FAD autoencoders and the Inception weights the wanted metrics read;
    a file the user named must work, a missing default only refuses its metrics."""
    wanted, source = set(ev.wanted), ev.run.source
    if {"mse", "fid", "kid", "fid_clean", "spikes"} & wanted:
        ev.test_full = load_split(source.name, "test", ev.data_root, ev.download)
    if "fad" in wanted and fad_autoencoder is not None:
        from .metrics.fad import load_fad_autoencoder

        ev.fad_model, ev.fad_record = load_fad_autoencoder(fad_autoencoder)
        if ev.fad_record["dataset"] != source.name:
            raise ConfigError(
                f"the FAD autoencoder {ev.fad_record['path']} was trained on {ev.fad_record['dataset']!r}, "
                f"the checkpoint on {source.name!r}"
            )
    if "fad_published" in wanted:
        ev.published = _open_published_fad(source, published_autoencoder, published_stats, published_dir)
    if set(INCEPTION_METRICS) & wanted:
        from .metrics.inception import resolve_inception_weights

        try:
            ev.weights = resolve_inception_weights(
                inception_weights, cache_dir=ev.cache_dir, allow_download=ev.download
            )
        except MetricUnavailableError as exc:
            if inception_weights is not None:  # a file the user named must work
                raise
            ev.weights_refusal = str(exc)  # recorded for FID/KID/IS; the other metrics still run


def _start(ev: _Evaluation) -> None:
    run = ev.run
    ev.result = {
        "model": run.ckpt["model_name"],
        "dataset": run.source.name,
        "data_label": run.source.label,
        "checkpoint": ev.checkpoint,
        "checkpoint_epoch": run.ckpt.get("epoch"),
        "checkpoint_step": run.ckpt.get("step"),
        "timesteps": getattr(run.model.config, "timesteps", None),
        "device": str(run.device),
        "seed": run.seed,
        "code_version": code_version(),
        "torch_version": str(torch.__version__),
    }
    log.info(
        "evaluating %s (%s, epoch %s) on %s: %s",
        run.ckpt["model_name"],
        ev.checkpoint,
        run.ckpt.get("epoch"),
        run.source.label,
        ", ".join(ev.wanted),
    )


def _measure(ev: _Evaluation) -> None:
    """Each wanted metric in turn, ``metrics.json`` rewritten after each."""
    run, wanted, result = ev.run, ev.wanted, ev.result
    if "params" in wanted:
        result["parameters"] = _parameters_entry(run.model)
    if "mse" in wanted:
        result["reconstruction_mse"] = _mse_entry(ev)
        ev.save()
    if "spikes" in wanted:
        result["spike_costs"] = _spike_entry(run.model, ev.test_full, run.device, run.seed)
        ev.save()
    if (
        (set(INCEPTION_METRICS) & set(wanted) and ev.weights is not None)
        or ev.fad_model is not None
        or (ev.published is not None and "encoder" in ev.published)
    ):
        start = time.perf_counter()
        ev.generated = generate(run.model, ev.num_samples, ev.batch_size, run.device, run.seed, ev.progress)
        log.info("generated %d images in %.1f s", ev.num_samples, time.perf_counter() - start)
    inception_wanted = [m for m in INCEPTION_METRICS if m in wanted]
    if inception_wanted and ev.weights is None:
        log.warning("FID/KID/IS not computed: %s", ev.weights_refusal)
        for key in inception_wanted:
            result[RESULT_KEYS[key]] = {"value": None, "refused": ev.weights_refusal}
    elif inception_wanted:
        _inception_metrics(ev, inception_wanted)
    ev.save()
    if "fad" in wanted:
        result["fad"] = _fad_entry(ev.fad_model, ev.fad_record, ev.generated, ev.num_samples, run.device)
        ev.save()
    if "fad_published" in wanted:
        assert ev.published is not None  # opened whenever "fad_published" is wanted
        result["fad_published"] = _published_fad_entry(
            ev.published, ev.generated, ev.num_samples, run.source, run.device
        )
        ev.save()
    if "sampling" in wanted:
        from .metrics import time_sampling

        n = min(ev.num_samples, 256)
        cost = time_sampling(run.model, n=n, batch_size=min(ev.batch_size, n), repeats=3, warmup=1, seed=run.seed)
        result["sampling_time"] = {**cost.to_dict(), "label": cost.label()}
        log.info("%s", cost.label())


def _parameters_entry(model: VAEModel) -> Dict:
    return {
        "total": count_parameters(model),
        "by_module": {
            n: sum(p.numel() for p in c.parameters())
            for n, c in model.named_children()
            if sum(p.numel() for p in c.parameters())
        },
        "what": "trainable parameters of the modules the model uses (buffers excluded)",
    }


def _mse_entry(ev: _Evaluation) -> Dict:
    run = ev.run
    assert ev.test_full is not None  # loaded whenever "mse" is wanted
    test, test_label = first_n(ev.test_full, ev.test_subset)
    terms = evaluate_terms(run.model, test, ev.batch_size, run.device, run.seed)
    log.info("reconstruction MSE %.5f (N=%d, %s)", terms["mse"], len(test), test_label)
    return {
        "value": terms["mse"],
        "n": len(test),
        "split": test_label,
        "averaging": "mean over images of the per-image pixel MSE, images in [-1, 1] (the original code "
        "averaged batch means)",
        "latent": f"{run.model.latent_description} (eval-mode batch norm, generator seed {run.seed})",
    }


def _spike_entry(model, test_full, dev, seed) -> Dict:
    from .metrics.spikes import spike_costs

    first, costs_label = first_n(test_full, 100)
    costs = spike_costs(model, to_model_range(first.images).to(dev), torch.Generator(device=dev).manual_seed(seed))
    costs["split"] = costs_label
    log.info(
        "spikes: mean firing rate %s; reconstruction path %.4g synops + %.4g MACs per image (N=%d)",
        "n/a" if costs["mean_firing_rate"] is None else f"{costs['mean_firing_rate']:.4f}",
        costs["reconstruction_path"]["synops"],
        costs["reconstruction_path"]["macs"],
        len(first),
    )
    return costs


def _fad_entry(fad_model, record, generated, num_samples, dev) -> Dict:
    if fad_model is None:
        reason = (
            "FAD needs the dataset's FAD autoencoder: train it with 'python -m esvae train-fad-autoencoder "
            "--dataset D --out DIR' and pass --fad-autoencoder DIR"
        )
        log.warning("FAD not computed: %s", reason)
        return {"value": None, "refused": reason}
    from .metrics.fad import fad

    value = fad(fad_model, record, generated, dev)
    training = record["training"]
    log.info("FAD@%d %.4f (vs %d test-split codes)", num_samples, value, record["test_stats"]["n"])
    return {
        "value": value,
        "name": f"FAD@{num_samples}",
        "n_generated": num_samples,
        "n_reference": int(record["test_stats"]["n"]),
        "reference_split": record["test_stats"]["split"],
        "autoencoder": record["path"],
        "code_dim": record["code_dim"],
        "autoencoder_training": f"{training['epochs']} epochs on {training['train_images']} {record['data_label']} "
        f"training images, final test MSE {training['history'][-1]['test_mse']:.5f}",
        "inputs": "generated images in [-1, 1] at native resolution",
    }


def _inception_metrics(ev: _Evaluation, wanted: List[str]) -> None:
    """IS of the generated images, then FID-clean and torch-fidelity's FID/KID against the reference split."""
    from .metrics.fidelity import torch_fidelity_version

    common = {
        "weights": ev.weights.label(),
        "weights_file": str(ev.weights.path),
        "torch_fidelity_version": torch_fidelity_version(),
        "n_generated": ev.num_samples,
        "preprocessing": "generated images in [-1, 1] -> uint8 [0, 255]; greyscale repeated to 3 channels; "
        "torch-fidelity resizes to 299x299",
    }
    if "is" in wanted:
        ev.result["inception_score"] = _inception_score_entry(ev, common)
    if not {"fid", "kid", "fid_clean"} & set(wanted):
        return
    reference, ref = _reference(ev)
    if "fid_clean" in wanted:
        ev.result["fid_clean"] = _fid_clean_entry(ev, reference, common, ref)
        ev.save()
    if "fid" in wanted or "kid" in wanted:
        _fid_kid_entries(ev, reference, "fid" in wanted, "kid" in wanted, common, ref)


def _inception_score_entry(ev: _Evaluation, common: Dict) -> Dict:
    from .metrics.fidelity import inception_score_splits

    try:
        raw = ev.fidelity(None, fid=False, kid=False, isc=True)
    except MetricUnavailableError as exc:
        log.warning("Inception Score not computed: %s", exc)
        return {"value": None, "refused": str(exc), "weights": ev.weights.label()}
    log.info("IS@%d %.4f", ev.num_samples, raw["inception_score_mean"])
    return {
        "value": raw["inception_score_mean"],
        "std": raw["inception_score_std"],
        "name": f"IS@{ev.num_samples}",
        "splits": inception_score_splits(ev.num_samples),
        **common,
    }


def _reference(ev: _Evaluation) -> Tuple[torch.Tensor, Dict]:
    """The reference images (uint8) and how entries describe them. CelebA: the paper computed FID
    against the validation split; the others against the test split."""
    from .metrics.fidelity import reference_cache_name

    source = ev.run.source
    ref_split = "valid" if source.name == "celeba" else "test"
    full = ev.test_full if ref_split == "test" else load_split(source.name, ref_split, ev.data_root, ev.download)
    assert full is not None  # the test split is loaded whenever FID, KID or FID-clean is wanted
    part, split = first_n(full, ev.reference_subset)
    name = reference_cache_name(source.name, split, part.images, ev.weights)
    return part.images, {"n_reference": len(part), "reference_split": split, "reference_cache_name": name}


def _fid_clean_entry(ev: _Evaluation, reference: torch.Tensor, common: Dict, ref: Dict) -> Dict:
    from .metrics.clean_fid import PREPROCESSING, fid_clean, to_255

    start = time.perf_counter()
    # clean-fid's generator path, as the authors called it: (x + 1) / 2 * 255 in float, not rounded
    value = fid_clean(
        to_255(ev.images),
        reference,
        ev.weights,
        reference_name=ref["reference_cache_name"],
        cache_dir=ev.cache_dir,
        batch_size=ev.batch_size,
        device=ev.run.device,
        progress=ev.progress,
    )
    log.info(
        "FID-clean@%d %.4f (vs %s, N=%d; %.1f s)",
        ev.num_samples,
        value,
        ref["reference_split"],
        ref["n_reference"],
        time.perf_counter() - start,
    )
    return {
        "value": value,
        "name": f"FID-clean@{ev.num_samples}",
        **common,
        "preprocessing": "generated images in [-1, 1] -> (x + 1) / 2 * 255 in float, not rounded "
        "(the authors' call of clean-fid); reference images uint8; " + PREPROCESSING,
        "protocol": "clean-fid 'clean' mode, the ESVAE paper's FID protocol",
        **ref,
    }


def _fid_kid_entries(ev: _Evaluation, reference: torch.Tensor, fid: bool, kid: bool, common: Dict, ref: Dict) -> None:
    start = time.perf_counter()
    raw = ev.fidelity(reference, fid=fid, kid=kid, reference_name=ref["reference_cache_name"])
    log.info("Inception features and metrics in %.1f s", time.perf_counter() - start)
    n, split = ev.num_samples, ref["reference_split"]
    if fid:
        ev.result["fid"] = {"value": raw["frechet_inception_distance"], "name": f"FID@{n}", **common, **ref}
        log.info("FID@%d %.4f (vs %s, N=%d)", n, raw["frechet_inception_distance"], split, ref["n_reference"])
    if kid:
        ev.result["kid"] = {
            "value": raw["kernel_inception_distance_mean"],
            "std": raw["kernel_inception_distance_std"],
            "name": f"KID@{n}",
            "subsets": 100,
            "subset_size": min(1000, n, ref["n_reference"]),
            "kernel": "polynomial, degree 3 (torch-fidelity default)",
            **common,
            **ref,
        }
        log.info("KID@%d %.5f +- %.5f", n, raw["kernel_inception_distance_mean"], raw["kernel_inception_distance_std"])


def _open_published_fad(source: DataSource, autoencoder, stats, directory) -> Dict:
    """The published FAD files for ``source``: ``{"encoder", "stats", paths and hashes}``, or
    ``{"refused": reason}`` when none were supplied. Files named explicitly must load (else
    :class:`CheckpointError`); a folder without this dataset's files is a refusal."""
    from .metrics.fad import (
        PUBLISHED_FILES,
        _named_for_another_dataset,
        load_published_autoencoder,
        load_published_stats,
        published_dataset,
        published_files,
    )
    from .metrics.inception import sha256_of

    if (autoencoder is None) != (stats is None):
        raise ConfigError(
            "--fad-published-autoencoder and --fad-published-stats go together (the codes' reference "
            "statistics must come from the same autoencoder)"
        )
    if autoencoder is not None and directory is not None:
        raise ConfigError("give either the two published FAD files or --fad-published-dir, not both")
    if autoencoder is None and directory is None:
        files = PUBLISHED_FILES.get(source.setting)
        where = f"metrics/{files[0]} and metrics/{files[1]}" if files else "their files"
        return {
            "refused": f"the published FAD files were not supplied: copy the FSVAE/ESVAE authors' {where} and "
            "pass --fad-published-autoencoder/--fad-published-stats (or --fad-published-dir, or set "
            "the preset's evaluate.fad_published_dir)"
        }
    if directory is not None:
        if not Path(directory).is_dir():
            raise ConfigError(f"--fad-published-dir {directory} is not a folder")
        if published_dataset(source.name) is None:
            return {"refused": f"the authors published no FAD autoencoder for {source.label}"}
        autoencoder, stats = published_files(directory, source.setting)
        absent = [str(p) for p in (autoencoder, stats) if not p.is_file()]
        if absent:
            return {"refused": f"published FAD files for {source.label} not found: {', '.join(absent)}"}
    encoder = load_published_autoencoder(autoencoder, source.setting)
    other = _named_for_another_dataset(Path(stats), source.setting, 1)
    if other:
        raise CheckpointError(f"{stats} is named as the authors' {other} statistics, not {source.setting}'s")
    reference = load_published_stats(stats)
    if reference.mean.shape[0] != encoder.code_dim:
        raise CheckpointError(
            f"published FAD statistics {stats} are {reference.mean.shape[0]}-d, the autoencoder "
            f"{autoencoder} codes {encoder.code_dim}-d: files of different datasets?"
        )
    return {
        "encoder": encoder,
        "stats": reference,
        "autoencoder": str(autoencoder),
        "stats_file": str(stats),
        "autoencoder_sha256": sha256_of(Path(autoencoder)),
        "stats_sha256": sha256_of(Path(stats)),
    }


def published_fad_label(entry: Dict) -> str:
    """``published AE <sha8>, stats <sha8>``: which files a ``fad_published`` value came from."""
    return f"published AE {entry['autoencoder_sha256'][:8]}, stats {entry['stats_sha256'][:8]}"


def _published_fad_entry(published: Dict, generated, num_samples: int, source: DataSource, dev) -> Dict:
    if "refused" in published:
        log.warning("published FAD not computed: %s", published["refused"])
        return {"value": None, "refused": published["refused"]}
    from .metrics.fad import PUBLISHED_BATCH_NORM, published_codes
    from .metrics.frechet import GaussianStats, frechet_distance

    codes = published_codes(published["encoder"], generated, device=dev)
    value = frechet_distance(GaussianStats.of(codes), published["stats"])
    entry = {
        "value": value,
        "name": f"FAD@{num_samples}",
        "n_generated": num_samples,
        "autoencoder": published["autoencoder"],
        "autoencoder_sha256": published["autoencoder_sha256"],
        "stats": published["stats_file"],
        "stats_sha256": published["stats_sha256"],
        "code_dim": published["encoder"].code_dim,
        "reference": f"the authors' published statistics of the {source.setting} test split's codes "
        "(N not recorded in the file)",
        "inputs": "generated images in [-1, 1] at native resolution",
        "batch_norm": PUBLISHED_BATCH_NORM,
    }
    if source.name != source.setting:
        entry["note"] = (
            f"the generator was trained on {source.label}; the reference statistics are of the full "
            f"{source.setting} test split"
        )
    entry["label"] = published_fad_label(entry)
    log.info("FAD@%d with the published autoencoder %.4f (%s)", num_samples, value, entry["label"])
    return entry
