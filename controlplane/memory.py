"""An optional fixed glibc mmap threshold for the worker (`CONTROLPLANE_MALLOC_MMAP_THRESHOLD_BYTES`).

glibc serves an allocation larger than its mmap threshold from a mapping of its own, which goes
back to the operating system when it is freed. The threshold starts at 128 KiB, and each time a
mapped block is freed it rises to that block's size (up to 32 MiB), so later blocks of that size
come from the heap. When the encoder padded each batch to its longest text, its tensors had a
different size in almost every batch and left gaps in the heap that later tensors did not fit.
The heap grew from 675 to 906 MiB over 600,000 events while 336 to 365 MiB of it were in use.
Batches are now padded to a multiple of 8 word pieces, so the tensors take a few hundred sizes,
and with glibc's adjusting threshold the RSS stayed within 16 MiB from 109,500 to 500,000 events.

A fixed threshold maps and unmaps every large tensor instead. It lowers the RSS by about 300 MiB
but makes the encoder about a quarter slower, so it is off (0) by default. It is a fallback for
traffic whose heap still grows. Setting it turns off glibc's adjustment, as setting
`MALLOC_MMAP_THRESHOLD_` does. An operator who set that variable or a glibc tunable keeps their choice.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # the mallopt parameter number in glibc's malloc.h


def set_mmap_threshold(size: int) -> bool:
    """Fix glibc's mmap threshold at `size` bytes and return whether it was set.

    Nothing is set when `size` is 0, when the C library is not glibc, or when the environment
    already sets the threshold (`MALLOC_MMAP_THRESHOLD_`, or `GLIBC_TUNABLES` with
    `glibc.malloc.mmap_threshold`).
    """
    if size <= 0:
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        log.info("glibc's mmap threshold is left as the environment sets it")
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if libc.mallopt(M_MMAP_THRESHOLD, size) != 1:
        log.warning(
            "glibc rejected an mmap threshold of %d bytes, so the heap may grow over long runs. "
            "Set CONTROLPLANE_MALLOC_MMAP_THRESHOLD_BYTES to at most 33554432, or to 0.",
            size,
        )
        return False
    log.info("glibc's mmap threshold fixed at %d bytes", size)
    return True
