"""Evaluation metrics: Frechet distance (:mod:`.frechet`), Inception weights resolution and the
offline conversion (:mod:`.inception`), FID/KID/IS through torch-fidelity (:mod:`.fidelity`), FID in
clean-fid's protocol (:mod:`.clean_fid`), FAD with our or the published autoencoder (:mod:`.fad`),
spike statistics and operation counts (:mod:`.spikes`) with their energy estimate (:mod:`.energy`), and
the cost of generating images (:func:`time_sampling`). ``python -m esvae evaluate`` uses them all."""

from .frechet import GaussianStats, frechet_distance
from .sampling_cost import SamplingCost, time_sampling

__all__ = ["GaussianStats", "SamplingCost", "frechet_distance", "time_sampling"]
