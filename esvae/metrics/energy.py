"""The energy estimate per image from operation counts (docs/metrics.md section 6.3).

0.9 pJ per synaptic operation (an accumulate) and 4.6 pJ per multiply-accumulate: M. Horowitz's
45 nm CMOS figures for 32-bit floating point (add 0.9 pJ; multiply 3.7 pJ + add 0.9 pJ), "Computing's
energy problem (and what we can do about it)", ISSCC 2014, the convention of SNN papers. Arithmetic
only; no torch needed (the report uses it on stored counts).
"""

from __future__ import annotations

PJ_PER_SYNOP = 0.9  # 32-bit float add, 45 nm (Horowitz, ISSCC 2014)
PJ_PER_MAC = 4.6  # 32-bit float multiply (3.7 pJ) + add (0.9 pJ), 45 nm
ENERGY_ASSUMPTIONS = (
    f"{PJ_PER_SYNOP} pJ per synaptic operation (accumulate) + {PJ_PER_MAC} pJ per MAC, 45 nm "
    "CMOS 32-bit float (Horowitz, ISSCC 2014); arithmetic only (no memory access, data movement "
    "or neuron-state updates)"
)


def energy_pj(synops: float, macs: float) -> float:
    """Estimated energy in picojoules of ``synops`` accumulates and ``macs`` multiply-accumulates."""
    return PJ_PER_SYNOP * synops + PJ_PER_MAC * macs
