"""``python -m esvae probe``: the paper's two qualitative claims, measured (docs/metrics.md section 3).

(a) Encoder information retention: a multinomial logistic regression on the posterior code
    (spiking models: firing rates; FSVAE: vote probabilities averaged over k and T; ANN VAE: mu),
    fitted on the training split, scored on the test split; and the test MSE when the decoder
    reads the deterministic code (rates re-encoded as evenly spaced spikes, no sampling noise)
    next to the MSE with the model's own sampling.
(b) Decoder robustness: the latent spike train fed to the decoder is time-shuffled (one random
    permutation of the T steps per image: every unit keeps its spike count) or bit-flipped with
    probability a in {0.05, ..., 0.30}; reconstruction MSE against the clean input per condition
    and its increase over the unperturbed MSE. Spiking latents only.

Writes ``probes.json``, ``robustness.tsv``, ``robustness.png`` (MSE vs a, shuffled as a marker),
``perturbations.png`` (rows: input, reconstruction, shuffled, each noise level) and ``probe.log``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from .checkpoints import code_version
from .data import ImageSplit, first_n, iterate_batches, load_split, seeded_subset
from .files import atomic_path, write_text_atomic
from .logs import log_to_file
from .results import write_result

log = logging.getLogger(__name__)

NOISE_LEVELS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30)


def flip_bits(spikes: torch.Tensor, a: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Flip every 0/1 entry independently with probability ``a``."""
    flips = torch.rand(spikes.shape, generator=generator, device=spikes.device) < a
    return torch.where(flips, 1 - spikes, spikes)


def shuffle_time(spikes: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Permute ``(T, N, L)`` along T with one random permutation per image (index n)."""
    T, N = spikes.shape[:2]
    order = torch.rand(N, T, generator=generator, device=spikes.device).argsort(dim=1).T  # (T, N)
    return spikes.gather(0, order.unsqueeze(-1).expand_as(spikes))


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    l2: float = 1e-4,
    max_iter: int = 300,
) -> float:
    """Multinomial logistic regression (standardised features, L2 ``l2``, full-batch L-BFGS) -> test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(xs.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(xs @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (xt @ weight + bias).argmax(1).eq(test_y).double().mean().item()


@torch.no_grad()
def latent_codes(model, data: ImageSplit, batch_size: int, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.cat(
        [
            model.latent_code(x, gen).cpu()
            for x in iterate_batches(data.images, batch_size, shuffle=False, device=device)
        ]
    )


@torch.no_grad()
def robustness(model, test: ImageSplit, batch_size: int, device: torch.device, seed: int) -> List[Dict]:
    """MSE per perturbation condition, averaged per image over ``test``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    conditions = ["clean", "shuffled"] + [f"noise_{a:.2f}" for a in NOISE_LEVELS]
    totals = dict.fromkeys(conditions, 0.0)
    for x in iterate_batches(test.images, batch_size, shuffle=False, device=device):
        z = model(x, generator=gen).sampled_spikes  # (T, N, L) fed to the decoder
        trains = {"clean": z, "shuffled": shuffle_time(z, noise)}
        trains.update({f"noise_{a:.2f}": flip_bits(z, a, noise) for a in NOISE_LEVELS})
        for name, train in trains.items():
            totals[name] += (model.decode(train) - x).pow(2).flatten(1).mean(1).sum().item()
    clean = totals["clean"] / len(test)
    rows = []
    for name in conditions:
        mse = totals[name] / len(test)
        a = float(name.split("_")[1]) if name.startswith("noise_") else (0.0 if name == "clean" else None)
        rows.append({"condition": name, "a": a, "mse": mse, "increase": mse - clean})
    return rows


def _robustness_figures(
    model, test: ImageSplit, rows: List[Dict], out_dir: Path, device, seed: int, label: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import save_image

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    noisy = [r for r in rows if r["condition"] == "clean" or r["condition"].startswith("noise_")]
    ax.plot([r["a"] for r in noisy], [r["mse"] for r in noisy], marker="o", label=f"{label}: bit flips")
    shuffled = next(r for r in rows if r["condition"] == "shuffled")
    ax.scatter([0.0], [shuffled["mse"]], marker="x", s=60, color="black", label="time shuffled", zorder=3)
    ax.set_xlabel("flip probability a")
    ax.set_ylabel("reconstruction MSE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_dir / "robustness.png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    with torch.no_grad():
        x = next(iter(iterate_batches(test.images[:8], 8, shuffle=False, device=device)))
        gen = torch.Generator(device=device).manual_seed(seed)
        noise = torch.Generator(device=device).manual_seed(seed + 1)
        z = model(x, generator=gen).sampled_spikes
        rows_img = [x, model.decode(z), model.decode(shuffle_time(z, noise))]
        rows_img += [model.decode(flip_bits(z, a, noise)) for a in NOISE_LEVELS]
    with atomic_path(out_dir / "perturbations.png") as tmp:
        save_image((torch.cat(rows_img) + 1) / 2, tmp, nrow=x.shape[0], padding=2, pad_value=1.0)


def run_probes(
    checkpoint: os.PathLike,
    out_dir: os.PathLike,
    *,
    train_subset: int = 0,
    test_subset: int = 0,
    batch_size: int = 200,
    seed: Optional[int] = None,
    data_root=None,
    download: bool = False,
    device: str = "auto",
) -> Dict:
    """Both probes for one checkpoint; returns (and writes) ``probes.json``."""
    from .evaluate import open_run

    run = open_run(checkpoint, device, seed)
    ckpt, source = run.ckpt, run.source
    train_full = load_split(source.name, "train", data_root, download)
    train = seeded_subset(train_full, train_subset)
    train_split = "train" if len(train) == len(train_full) else f"train (seeded subset of {len(train)})"
    test, test_split = first_n(load_split(source.name, "test", data_root, download), test_subset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir, "probe.log"):
        result: Dict = {
            "model": ckpt["model_name"],
            "dataset": source.name,
            "data_label": source.label,
            "checkpoint": str(checkpoint),
            "checkpoint_epoch": ckpt.get("epoch"),
            "timesteps": getattr(run.model.config, "timesteps", None),
            "seed": run.seed,
            "code_version": code_version(),
        }
        result["information_retention"] = {
            "code": run.model.latent_code_label,
            "linear_probe": _linear_probe_entry(run, train, train_split, test, test_split, batch_size),
            **_reconstruction_entries(run, test, test_split, batch_size),
        }
        result["decoder_robustness"] = _robustness_entry(run, test, test_split, batch_size, out_dir)
        write_result(out_dir / "probes.json", "probe", result)
        return result


def _linear_probe_entry(run, train: ImageSplit, train_split: str, test: ImageSplit, test_split: str, batch_size: int):
    """(a) information retention: how well a linear classifier reads the class from the codes."""
    if run.source.name == "celeba":
        return {"value": None, "refused": "CelebA has no class labels in this project"}
    train_codes = latent_codes(run.model, train, batch_size, run.device, run.seed)
    test_codes = latent_codes(run.model, test, batch_size, run.device, run.seed)
    accuracy = linear_probe_accuracy(train_codes, train.labels, test_codes, test.labels)
    log.info(
        "linear probe: test accuracy %.4f (%d train / %d test, %s)", accuracy, len(train), len(test), run.source.label
    )
    return {
        "value": accuracy,
        "metric": "test accuracy of the class label",
        "fit": f"multinomial logistic regression, standardised {train_codes.shape[1]}-d codes, L2 1e-4, L-BFGS",
        "n_train": len(train),
        "train_split": train_split,
        "n_test": len(test),
        "test_split": test_split,
    }


def _reconstruction_entries(run, test: ImageSplit, test_split: str, batch_size: int) -> Dict:
    """The test MSE with the sampled latent and with the posterior code decoded without noise."""
    from .evaluate import evaluate_terms

    model, dev = run.model, run.device
    with torch.no_grad():
        sampled = evaluate_terms(model, test, batch_size, dev, run.seed)["mse"]
        gen = torch.Generator(device=dev).manual_seed(run.seed)
        total = 0.0
        for x in iterate_batches(test.images, batch_size, shuffle=False, device=dev):
            total += (model.decode_code(model.latent_code(x, gen)) - x).pow(2).flatten(1).mean(1).sum().item()
    log.info("reconstruction MSE: sampled %.5f, deterministic code %.5f (N=%d)", sampled, total / len(test), len(test))
    return {
        "mse_sampled": {"value": sampled, "n": len(test), "split": test_split, "latent": model.latent_description},
        "mse_deterministic": {
            "value": total / len(test),
            "n": len(test),
            "split": test_split,
            "latent": "the posterior code decoded without sampling noise"
            + (" (rates as round(rT) evenly spaced spikes)" if model.spiking_latent else ""),
        },
    }


def _robustness_entry(run, test: ImageSplit, test_split: str, batch_size: int, out_dir: Path) -> Dict:
    """(b) decoder robustness: perturbed latent spike trains (with robustness.tsv and the figures)."""
    model = run.model
    if not model.spiking_latent:
        return {"rows": None, "refused": "the model's latent is not a spike train"}
    rows = robustness(model, test, batch_size, run.device, run.seed)
    lines = ["condition\ta\tmse\tincrease"] + [
        f"{r['condition']}\t{'' if r['a'] is None else r['a']}\t{r['mse']:.6g}\t{r['increase']:.6g}" for r in rows
    ]
    write_text_atomic(out_dir / "robustness.tsv", "\n".join(lines) + "\n")
    _robustness_figures(model, test, rows, out_dir, run.device, run.seed, run.ckpt["model_name"])
    log.info("robustness: %s", ", ".join(f"{r['condition']} {r['mse']:.4f}" for r in rows))
    return {
        "rows": rows,
        "n": len(test),
        "split": test_split,
        "perturbation": "of the latent spike train fed to the decoder",
    }
