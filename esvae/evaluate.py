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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .checkpoints import code_version, load_checkpoint
from .data import DataSource, data_source, first_n, load_split, to_model_range
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

    from .metrics import time_sampling

    run = open_run(checkpoint, device, seed)
    dev, model, ckpt, source, seed = run.device, run.model, run.ckpt, run.source, run.seed
    if batch_size is None:  # the latent noise is drawn per batch: the run's batch size repeats its MSE
        batch_size = run.train_config.get("batch_size", 100)
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    wanted = list(dict.fromkeys(metrics))
    # Everything that can fail on input comes before the output folder exists.
    test_full = (
        load_split(source.name, "test", data_root, download)
        if {"mse", "fid", "kid", "fid_clean", "spikes"} & set(wanted)
        else None
    )
    fad_model = fad_record = None
    if "fad" in wanted and fad_autoencoder is not None:
        from .metrics.fad import load_fad_autoencoder

        fad_model, fad_record = load_fad_autoencoder(fad_autoencoder)
        if fad_record["dataset"] != source.name:
            raise ConfigError(
                f"the FAD autoencoder {fad_record['path']} was trained on {fad_record['dataset']!r}, "
                f"the checkpoint on {source.name!r}"
            )
    published = (
        _open_published_fad(source, fad_published_autoencoder, fad_published_stats, fad_published_dir)
        if "fad_published" in wanted
        else None
    )
    weights, weights_refusal = None, None
    if set(INCEPTION_METRICS) & set(wanted):
        from .metrics.inception import resolve_inception_weights

        try:
            weights = resolve_inception_weights(inception_weights, cache_dir=cache_dir, allow_download=download)
        except MetricUnavailableError as exc:
            if inception_weights is not None:  # a file the user named must work
                raise
            weights_refusal = str(exc)  # recorded for FID/KID/IS; the other metrics still run
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if progress is None else progress
    with log_to_file(out_dir, "evaluate.log"):
        result: Dict = {
            "model": ckpt["model_name"],
            "dataset": source.name,
            "data_label": source.label,
            "checkpoint": str(checkpoint),
            "checkpoint_epoch": ckpt.get("epoch"),
            "checkpoint_step": ckpt.get("step"),
            "timesteps": getattr(model.config, "timesteps", None),
            "device": str(dev),
            "seed": seed,
            "code_version": code_version(),
            "torch_version": str(torch.__version__),
        }
        log.info(
            "evaluating %s (%s, epoch %s) on %s: %s",
            ckpt["model_name"],
            checkpoint,
            ckpt.get("epoch"),
            source.label,
            ", ".join(wanted),
        )

        def save() -> None:  # after every metric: a late failure keeps what was computed
            write_result(out_dir / "metrics.json", "evaluate", result)

        if "params" in wanted:
            result["parameters"] = {
                "total": count_parameters(model),
                "by_module": {
                    n: sum(p.numel() for p in c.parameters())
                    for n, c in model.named_children()
                    if sum(p.numel() for p in c.parameters())
                },
                "what": "trainable parameters of the modules the model uses (buffers excluded)",
            }
        if "mse" in wanted:
            assert test_full is not None  # loaded above whenever "mse" is wanted
            test, test_label = first_n(test_full, test_subset)
            terms = evaluate_terms(model, test, batch_size, dev, seed)
            result["reconstruction_mse"] = {
                "value": terms["mse"],
                "n": len(test),
                "split": test_label,
                "averaging": "mean over images of the per-image pixel MSE, images in [-1, 1] (the original code "
                "averaged batch means)",
                "latent": f"{model.latent_description} (eval-mode batch norm, generator seed {seed})",
            }
            log.info(
                "reconstruction MSE %.5f (N=%d, %s)", terms["mse"], len(test), result["reconstruction_mse"]["split"]
            )
            save()
        if "spikes" in wanted:
            result["spike_costs"] = _spike_entry(model, test_full, dev, seed)
            save()
        generated = None
        if (
            (set(INCEPTION_METRICS) & set(wanted) and weights is not None)
            or fad_model is not None
            or (published is not None and "encoder" in published)
        ):
            start = time.perf_counter()
            generated = generate(model, num_samples, batch_size, dev, seed, progress)  # in [-1, 1], CPU
            log.info("generated %d images in %.1f s", num_samples, time.perf_counter() - start)
        inception_wanted = [m for m in INCEPTION_METRICS if m in wanted]
        if inception_wanted and weights is None:
            log.warning("FID/KID/IS not computed: %s", weights_refusal)
            for key in inception_wanted:
                result[RESULT_KEYS[key]] = {"value": None, "refused": weights_refusal}
        elif inception_wanted:
            _inception_metrics(
                result,
                generated,
                source,
                inception_wanted,
                weights,
                num_samples,
                reference_subset,
                test_full,
                data_root,
                download,
                batch_size,
                dev,
                cache_dir,
                progress,
                save,
            )
        save()
        if "fad" in wanted:
            result["fad"] = _fad_entry(fad_model, fad_record, generated, num_samples, dev)
            save()
        if "fad_published" in wanted:
            assert published is not None  # opened above whenever "fad_published" is wanted
            result["fad_published"] = _published_fad_entry(published, generated, num_samples, source, dev)
            save()
        if "sampling" in wanted:
            n = min(num_samples, 256)
            cost = time_sampling(model, n=n, batch_size=min(batch_size, n), repeats=3, warmup=1, seed=seed)
            result["sampling_time"] = {**cost.to_dict(), "label": cost.label()}
            log.info("%s", cost.label())
        write_result(out_dir / "metrics.json", "evaluate", result)
        log.info("wrote %s", out_dir / "metrics.json")
        return result


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


def _inception_metrics(
    result,
    generated,
    source,
    wanted,
    weights,
    num_samples,
    reference_subset,
    test_full,
    data_root,
    download,
    batch_size,
    dev,
    cache_dir,
    progress,
    save,
) -> None:
    from .metrics.fidelity import (
        fidelity_metrics,
        inception_score_splits,
        reference_cache_name,
        to_uint8,
        torch_fidelity_version,
    )

    generated_float, generated = generated, to_uint8(generated)
    common = {
        "weights": weights.label(),
        "weights_file": str(weights.path),
        "torch_fidelity_version": torch_fidelity_version(),
        "n_generated": num_samples,
        "preprocessing": "generated images in [-1, 1] -> uint8 [0, 255]; greyscale repeated to 3 channels; "
        "torch-fidelity resizes to 299x299",
    }
    if "is" in wanted:
        try:
            raw = fidelity_metrics(
                generated,
                None,
                weights,
                fid=False,
                kid=False,
                isc=True,
                device=dev,
                batch_size=batch_size,
                cache_dir=cache_dir,
                verbose=progress,
            )
            result["inception_score"] = {
                "value": raw["inception_score_mean"],
                "std": raw["inception_score_std"],
                "name": f"IS@{num_samples}",
                "splits": inception_score_splits(num_samples),
                **common,
            }
            log.info("IS@%d %.4f", num_samples, raw["inception_score_mean"])
        except MetricUnavailableError as exc:
            result["inception_score"] = {"value": None, "refused": str(exc), "weights": weights.label()}
            log.warning("Inception Score not computed: %s", exc)
    fid, kid = "fid" in wanted, "kid" in wanted
    if not (fid or kid or "fid_clean" in wanted):
        return
    # CelebA: the paper computed FID against the validation split.
    ref_split = "valid" if source.name == "celeba" else "test"
    reference_full = test_full if ref_split == "test" else load_split(source.name, ref_split, data_root, download)
    reference_part, split = first_n(reference_full, reference_subset)
    reference = reference_part.images
    name = reference_cache_name(source.name, split, reference, weights)
    ref = {"n_reference": reference.shape[0], "reference_split": split, "reference_cache_name": name}
    if "fid_clean" in wanted:
        from .metrics.clean_fid import PREPROCESSING, fid_clean, to_255

        start = time.perf_counter()
        # clean-fid's generator path, as the authors called it: (x + 1) / 2 * 255 in float, not rounded
        value = fid_clean(
            to_255(generated_float),
            reference,
            weights,
            reference_name=name,
            cache_dir=cache_dir,
            batch_size=batch_size,
            device=dev,
            progress=progress,
        )
        result["fid_clean"] = {
            "value": value,
            "name": f"FID-clean@{num_samples}",
            **common,
            "preprocessing": "generated images in [-1, 1] -> (x + 1) / 2 * 255 in float, not rounded "
            "(the authors' call of clean-fid); reference images uint8; " + PREPROCESSING,
            "protocol": "clean-fid 'clean' mode, the ESVAE paper's FID protocol",
            **ref,
        }
        log.info(
            "FID-clean@%d %.4f (vs %s, N=%d; %.1f s)",
            num_samples,
            value,
            split,
            reference.shape[0],
            time.perf_counter() - start,
        )
        save()
    if not (fid or kid):
        return
    start = time.perf_counter()
    raw = fidelity_metrics(
        generated,
        reference,
        weights,
        fid=fid,
        kid=kid,
        reference_name=name,
        device=dev,
        batch_size=batch_size,
        cache_dir=cache_dir,
        verbose=progress,
    )
    log.info("Inception features and metrics in %.1f s", time.perf_counter() - start)
    if fid:
        result["fid"] = {"value": raw["frechet_inception_distance"], "name": f"FID@{num_samples}", **common, **ref}
        log.info("FID@%d %.4f (vs %s, N=%d)", num_samples, raw["frechet_inception_distance"], split, reference.shape[0])
    if kid:
        subset = min(1000, num_samples, reference.shape[0])
        result["kid"] = {
            "value": raw["kernel_inception_distance_mean"],
            "std": raw["kernel_inception_distance_std"],
            "name": f"KID@{num_samples}",
            "subsets": 100,
            "subset_size": subset,
            "kernel": "polynomial, degree 3 (torch-fidelity default)",
            **common,
            **ref,
        }
        log.info(
            "KID@%d %.5f +- %.5f",
            num_samples,
            raw["kernel_inception_distance_mean"],
            raw["kernel_inception_distance_std"],
        )


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
