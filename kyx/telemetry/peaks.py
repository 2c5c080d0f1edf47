"""Datasheet peak dense bf16 matmul FLOP/s of accelerators, by JAX ``device_kind``.

MFU on an accelerator is measured against the vendor's peak (MaxText, PaLM), not against a
timed matmul: ``datasheet_peak(jax.devices()[0].device_kind)`` is ``(chip, FLOP/s per
device)`` or None for a device the table lacks (CPUs, other GPUs). One JAX device is one
chip on the TPUs listed (v4 and v5p chips run as one megacore device) and one GPU.

Each pattern matches the whole ``device_kind`` (case-insensitive). The strings are those
JAX reports: the TPU runtime's chip names ("TPU v5 lite" is v5e, "TPU v5" is v5p, "TPU v6
lite" is v6e; "TPU v4 lite", the v4i inference chip, is deliberately absent) and the CUDA
device names ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe" ...).
Peaks are dense (NVIDIA's datasheets print bf16 "with sparsity", twice the dense figure).
"""
from __future__ import annotations

import re

# (chip, device_kind pattern, dense bf16 FLOP/s per device); first full match wins
DATASHEET_PEAKS: tuple[tuple[str, str, float], ...] = (
    # Cloud TPU docs, "TPU v4": 275 TFLOPs peak bf16 compute per chip
    ("TPU v4", r"TPU v4", 275e12),
    # Cloud TPU docs, "TPU v5e": 197 TFLOPs peak bf16 compute per chip
    ("TPU v5e", r"TPU v5 ?(lite|e)", 197e12),
    # Cloud TPU docs, "TPU v5p": 459 TFLOPs peak bf16 compute per chip
    ("TPU v5p", r"TPU v5p?", 459e12),
    # Cloud TPU docs, "TPU v6e" (Trillium): 918 TFLOPs peak bf16 compute per chip
    ("TPU v6e", r"TPU v6 ?(lite|e)", 918e12),
    # NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity), SXM and PCIe
    ("A100", r"NVIDIA A100\b.*", 312e12),
    # NVIDIA H100 datasheet: BF16 Tensor Core 1,513 TFLOPS with sparsity for H100 PCIe,
    # 1,671 for H100 NVL, 1,979 for H100 SXM; dense is half
    ("H100 PCIe", r"NVIDIA H100\b.*PCIe.*", 756e12),
    ("H100 NVL", r"NVIDIA H100\b.*NVL.*", 835e12),
    ("H100 SXM", r"NVIDIA H100\b.*", 989e12),
    # NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity for H200 SXM,
    # 1,671 for H200 NVL; dense is half
    ("H200 NVL", r"NVIDIA H200\b.*NVL.*", 835e12),
    ("H200 SXM", r"NVIDIA H200\b.*", 989e12),
    # NVIDIA HGX B200 (1,000 W): FP16/BF16 Tensor Core 4.5 PFLOPS with sparsity per GPU
    # (36 PFLOPS per 8-GPU board); dense 2.25 PFLOPS
    ("B200", r"NVIDIA B200\b.*", 2.25e15),
)


def datasheet_peak(device_kind: str) -> tuple[str, float] | None:
    """(chip name, dense bf16 FLOP/s per device) of a JAX ``device_kind``, or None."""
    for chip, pattern, flops in DATASHEET_PEAKS:
        if re.fullmatch(pattern, device_kind.strip(), flags=re.IGNORECASE):
            return chip, flops
    return None
