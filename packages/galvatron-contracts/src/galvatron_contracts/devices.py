"""Device facts every tool agrees on: the dense peak TFLOP/s table and how a CPU is named (no torch here).

    peak_tflops("NVIDIA H100 80GB HBM3", "bf16")   # 989.4
    peak_tflops("NVIDIA A100-SXM4-40GB", "fp32")   # None (the table holds 16-bit tensor-core peaks only)
    cpu_name()                                      # 'AMD EPYC 7B13' (from /proc/cpuinfo where there is one)
"""
from __future__ import annotations

import platform

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s from the vendors' datasheets, matched as substrings of
# the device name in this order (so "H100 PCIe" before "H100", "A10G" before "A10").
PEAK_16BIT_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("A6000", 154.8), ("V100", 125.0),
)


def peak_tflops(device_name: str, dtype: str = "bf16") -> float | None:
    """Dense peak TFLOP/s of ``device_name`` for ``dtype`` ('bf16' or 'fp16'); None when unknown."""
    if dtype not in ("bf16", "fp16"):
        return None
    return next((peak for key, peak in PEAK_16BIT_TFLOPS if key in device_name), None)


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what the platform module says, else 'cpu'."""
    name = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return name
