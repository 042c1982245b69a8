"""The GPU evidence: `gpu_evidence.sh`, `fidelity_gpu.sh` and the oracle's
LDAM-style training loop (`fidelity_gpu`)."""
