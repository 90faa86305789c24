"""``python -m esvae evaluate``: the metrics of a trained checkpoint, each with its conditions.

Writes ``metrics.json`` and ``evaluate.log`` in ``out_dir``. Metrics (``--metrics``, default all):

* ``mse``      reconstruction MSE on the test split, averaged per image, eval mode
* ``fid``, ``kid``  torch-fidelity, ``num_samples`` generated images vs the reference split (the test
  split; CelebA: the validation split, as the paper did), labelled ``FID@N`` / ``KID@N``
* ``is``       torch-fidelity's Inception Score of the generated images; refused (recorded with the
  reason, never a number from a substitute network) when the weights lack the classifier head
* ``fad``      Frechet Autoencoder Distance with the dataset's FAD autoencoder (``fad_autoencoder``,
  from ``train-fad-autoencoder``); refused, with the reason, when none is given
* ``params``   trainable parameters of the modules in use
* ``spikes``   firing rate per spiking layer, synaptic operations and MACs per image
  (:func:`esvae.metrics.spikes.spike_costs`) on up to 100 test images
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
from .errors import ConfigError, MetricUnavailableError
from .models.registry import count_parameters
from .files import write_json
from .train import EVAL_SEED_OFFSET, evaluate as evaluate_terms, log_to_file, resolve_device

log = logging.getLogger(__name__)

METRICS = ("mse", "fid", "kid", "is", "fad", "params", "spikes", "sampling")


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
    model: torch.nn.Module   # in eval mode, on ``device``
    ckpt: Dict
    source: DataSource
    seed: int                # the training run's evaluation seed unless given
    train_config: Dict


def open_run(checkpoint: os.PathLike, device: str = "auto", seed: Optional[int] = None) -> OpenedRun:
    """Load a training run's checkpoint for evaluation: model, data source and generator seed."""
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(checkpoint, map_location=dev)
    resolved = ckpt.get("train_config", {})
    train_config = resolved.get("train_config", {})
    if seed is None:   # the same generator seed as the training run's own evaluation
        seed = train_config.get("seed", 0) + EVAL_SEED_OFFSET
    return OpenedRun(dev, model.to(dev).eval(), ckpt, data_source(resolved.get("dataset", ckpt["dataset"])), seed,
                     train_config)


def evaluate_checkpoint(checkpoint: os.PathLike, out_dir: os.PathLike, *, metrics: Sequence[str] = METRICS,
                        num_samples: int = 5000, test_subset: int = 0, reference_subset: int = 0,
                        batch_size: Optional[int] = None, inception_weights: Optional[os.PathLike] = None,
                        data_root: Optional[os.PathLike] = None, download: bool = False, device: str = "auto",
                        seed: Optional[int] = None, cache_dir: Optional[os.PathLike] = None,
                        fad_autoencoder: Optional[os.PathLike] = None, progress: Optional[bool] = None) -> Dict:
    """Evaluate a checkpoint of this project; returns (and writes) the metrics dict."""
    import sys

    from .metrics import time_sampling

    run = open_run(checkpoint, device, seed)
    dev, model, ckpt, source, seed = run.device, run.model, run.ckpt, run.source, run.seed
    if batch_size is None:   # the latent noise is drawn per batch: the run's batch size repeats its MSE
        batch_size = run.train_config.get("batch_size", 100)
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    wanted = list(dict.fromkeys(metrics))
    # Everything that can fail on input comes before the output folder exists.
    test_full = load_split(source.name, "test", data_root, download) if {"mse", "fid", "kid", "spikes"} & set(wanted) else None
    fad_model = fad_record = None
    if "fad" in wanted and fad_autoencoder is not None:
        from .metrics.fad import load_fad_autoencoder
        fad_model, fad_record = load_fad_autoencoder(fad_autoencoder)
        if fad_record["dataset"] != source.name:
            raise ConfigError(f"the FAD autoencoder {fad_record['path']} was trained on {fad_record['dataset']!r}, "
                              f"the checkpoint on {source.name!r}")
    weights, weights_refusal = None, None
    if {"fid", "kid", "is"} & set(wanted):
        from .metrics.inception import resolve_inception_weights
        try:
            weights = resolve_inception_weights(inception_weights, cache_dir=cache_dir, allow_download=download)
        except MetricUnavailableError as exc:
            if inception_weights is not None:   # a file the user named must work
                raise
            weights_refusal = str(exc)          # recorded for FID/KID/IS; the other metrics still run
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if progress is None else progress
    with log_to_file(out_dir, "evaluate.log"):
        result: Dict = {
            "model": ckpt["model_name"], "dataset": source.name, "data_label": source.label,
            "checkpoint": str(checkpoint), "checkpoint_epoch": ckpt.get("epoch"), "checkpoint_step": ckpt.get("step"),
            "timesteps": getattr(model.config, "timesteps", None), "device": str(dev), "seed": seed,
            "code_version": code_version(), "torch_version": str(torch.__version__),
        }
        log.info("evaluating %s (%s, epoch %s) on %s: %s", ckpt["model_name"], checkpoint, ckpt.get("epoch"),
                 source.label, ", ".join(wanted))
        def save() -> None:   # after every metric: a late failure keeps what was computed
            write_json(out_dir / "metrics.json", result)

        if "params" in wanted:
            result["parameters"] = {
                "total": count_parameters(model),
                "by_module": {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children()
                              if sum(p.numel() for p in c.parameters())},
                "what": "trainable parameters of the modules the model uses (buffers excluded)",
            }
        if "mse" in wanted:
            test, test_label = first_n(test_full, test_subset)
            terms = evaluate_terms(model, test, batch_size, dev, seed)
            result["reconstruction_mse"] = {
                "value": terms["mse"], "n": len(test), "split": test_label,
                "averaging": "mean over images of the per-image pixel MSE, images in [-1, 1] (the original code "
                             "averaged batch means)",
                "latent": f"{model.latent_description} (eval-mode batch norm, generator seed {seed})",
            }
            log.info("reconstruction MSE %.5f (N=%d, %s)", terms["mse"], len(test), result["reconstruction_mse"]["split"])
            save()
        if "spikes" in wanted:
            result["spike_costs"] = _spike_entry(model, test_full, dev, seed)
            save()
        generated = None
        if ({"fid", "kid", "is"} & set(wanted) and weights is not None) or fad_model is not None:
            start = time.perf_counter()
            generated = generate(model, num_samples, batch_size, dev, seed, progress)   # in [-1, 1], CPU
            log.info("generated %d images in %.1f s", num_samples, time.perf_counter() - start)
        inception_wanted = [m for m in ("fid", "kid", "is") if m in wanted]
        if inception_wanted and weights is None:
            log.warning("FID/KID/IS not computed: %s", weights_refusal)
            for key in inception_wanted:
                result[{"fid": "fid", "kid": "kid", "is": "inception_score"}[key]] = {"value": None,
                                                                                     "refused": weights_refusal}
        elif inception_wanted:
            _inception_metrics(result, generated, source, inception_wanted, weights, num_samples, reference_subset,
                               test_full, data_root, download, batch_size, dev, cache_dir, progress)
        save()
        if "fad" in wanted:
            result["fad"] = _fad_entry(fad_model, fad_record, generated, num_samples, dev)
        if "sampling" in wanted:
            n = min(num_samples, 256)
            cost = time_sampling(model, n=n, batch_size=min(batch_size, n), repeats=3, warmup=1, seed=seed)
            result["sampling_time"] = {**cost.to_dict(), "label": cost.label()}
            log.info("%s", cost.label())
        write_json(out_dir / "metrics.json", result)
        log.info("wrote %s", out_dir / "metrics.json")
        return result


def _spike_entry(model, test_full, dev, seed) -> Dict:
    from .metrics.spikes import spike_costs
    first, costs_label = first_n(test_full, 100)
    costs = spike_costs(model, to_model_range(first.images).to(dev), torch.Generator(device=dev).manual_seed(seed))
    costs["split"] = costs_label
    log.info("spikes: mean firing rate %s; reconstruction path %.4g synops + %.4g MACs per image (N=%d)",
             "n/a" if costs["mean_firing_rate"] is None else f"{costs['mean_firing_rate']:.4f}",
             costs["reconstruction_path"]["synops"], costs["reconstruction_path"]["macs"], len(first))
    return costs


def _fad_entry(fad_model, record, generated, num_samples, dev) -> Dict:
    if fad_model is None:
        reason = ("FAD needs the dataset's FAD autoencoder: train it with 'python -m esvae train-fad-autoencoder "
                  "--dataset D --out DIR' and pass --fad-autoencoder DIR")
        log.warning("FAD not computed: %s", reason)
        return {"value": None, "refused": reason}
    from .metrics.fad import fad
    value = fad(fad_model, record, generated, dev)
    training = record["training"]
    log.info("FAD@%d %.4f (vs %d test-split codes)", num_samples, value, record["test_stats"]["n"])
    return {"value": value, "name": f"FAD@{num_samples}", "n_generated": num_samples,
            "n_reference": int(record["test_stats"]["n"]), "reference_split": record["test_stats"]["split"],
            "autoencoder": record["path"], "code_dim": record["code_dim"],
            "autoencoder_training": f"{training['epochs']} epochs on {training['train_images']} {record['data_label']} "
                                    f"training images, final test MSE {training['history'][-1]['test_mse']:.5f}",
            "inputs": "generated images in [-1, 1] at native resolution"}


def _inception_metrics(result, generated, source, wanted, weights, num_samples, reference_subset, test_full, data_root,
                       download, batch_size, dev, cache_dir, progress) -> None:
    from .metrics.fidelity import (fidelity_metrics, inception_score_splits, reference_cache_name, to_uint8,
                                   torch_fidelity_version)

    generated = to_uint8(generated)
    common = {"weights": weights.label(), "weights_file": str(weights.path),
              "torch_fidelity_version": torch_fidelity_version(), "n_generated": num_samples,
              "preprocessing": "generated images in [-1, 1] -> uint8 [0, 255]; greyscale repeated to 3 channels; "
                               "torch-fidelity resizes to 299x299"}
    if "is" in wanted:
        try:
            raw = fidelity_metrics(generated, None, weights, fid=False, kid=False, isc=True, device=dev,
                                   batch_size=batch_size, cache_dir=cache_dir, verbose=progress)
            result["inception_score"] = {"value": raw["inception_score_mean"], "std": raw["inception_score_std"],
                                         "name": f"IS@{num_samples}", "splits": inception_score_splits(num_samples), **common}
            log.info("IS@%d %.4f", num_samples, raw["inception_score_mean"])
        except MetricUnavailableError as exc:
            result["inception_score"] = {"value": None, "refused": str(exc), "weights": weights.label()}
            log.warning("Inception Score not computed: %s", exc)
    fid, kid = "fid" in wanted, "kid" in wanted
    if not (fid or kid):
        return
    # CelebA: the paper computed FID against the validation split.
    ref_split = "valid" if source.name == "celeba" else "test"
    reference_full = test_full if ref_split == "test" else load_split(source.name, ref_split, data_root, download)
    reference_part, split = first_n(reference_full, reference_subset)
    reference = reference_part.images
    name = reference_cache_name(source.name, split, reference, weights)
    start = time.perf_counter()
    raw = fidelity_metrics(generated, reference, weights, fid=fid, kid=kid, reference_name=name, device=dev,
                           batch_size=batch_size, cache_dir=cache_dir, verbose=progress)
    log.info("Inception features and metrics in %.1f s", time.perf_counter() - start)
    ref = {"n_reference": reference.shape[0], "reference_split": split, "reference_cache_name": name}
    if fid:
        result["fid"] = {"value": raw["frechet_inception_distance"], "name": f"FID@{num_samples}", **common, **ref}
        log.info("FID@%d %.4f (vs %s, N=%d)", num_samples, raw["frechet_inception_distance"], split, reference.shape[0])
    if kid:
        subset = min(1000, num_samples, reference.shape[0])
        result["kid"] = {"value": raw["kernel_inception_distance_mean"], "std": raw["kernel_inception_distance_std"],
                         "name": f"KID@{num_samples}", "subsets": 100, "subset_size": subset,
                         "kernel": "polynomial, degree 3 (torch-fidelity default)", **common, **ref}
        log.info("KID@%d %.5f +- %.5f", num_samples, raw["kernel_inception_distance_mean"],
                 raw["kernel_inception_distance_std"])
