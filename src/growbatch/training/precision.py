"""Whether ``--precision bf16`` can pay on this machine: a CPU without bfloat16 instructions emulates them."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["BF16_CPU_FLAGS", "cpu_bf16_note", "cpu_flags"]

# x86: AVX512-BF16 (Cooper Lake, Sapphire Rapids and later, Zen 4 and later) and AMX-BF16 (Sapphire Rapids and
# later); Arm: the BF16 extension (Features line "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")

# NOTE [bf16 on the CPU]: issue 19 measured bf16 autocast at 1.91-2.00x float32's training throughput on a Zen 4
# that lists avx512_bf16, and at 0.42-0.47x on a Xeon whose /proc/cpuinfo lists AVX-512 but neither avx512_bf16
# nor amx_bf16 (a 2,048^2 bf16 matmul at 62 GFLOP/s against 330 in float32; bench/README.md section 8). oneDNN
# then converts to and from bfloat16 around float32 arithmetic. torch's own check
# (torch.ops.mkldnn._is_mkldnn_bf16_supported) says True on that Xeon, so the flags are read instead; the run
# still does what was asked, and says why it may be slow.


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The first processor's feature flags (x86 ``flags``, Arm ``Features``), or None where the file cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_bf16_note(precision: str, device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """A one-line warning when bf16 autocast would run on a CPU without bfloat16 instructions, else None
    (fp32, a GPU, or a CPU whose flags cannot be read: nothing known to say; NOTE [bf16 on the CPU])."""
    if precision != "bf16" or device.type != "cpu":
        return None
    flags = cpu_flags(cpuinfo)
    if flags is None or flags & set(BF16_CPU_FLAGS):
        return None
    return ("growbatch: warning: --precision bf16 on a CPU without bfloat16 instructions (its flags list none of "
            f"{', '.join(BF16_CPU_FLAGS)}): autocast emulates them, and bf16 trained at 0.42-0.47x float32's "
            "speed on such a CPU (bench/README.md section 8); --precision fp32 is likely faster here")
