"""The worker's optional fixed glibc mmap threshold: large freed blocks go back to the system."""

import os
import platform
import subprocess
import sys

import pytest

from controlplane.memory import set_mmap_threshold

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Frees an 8 MiB block first, which raises glibc's adjusting threshold to 8 MiB, then reports
# how many bytes of a 2 MiB block glibc mapped on its own instead of carving them from the heap.
PROBE = """
import ctypes, sys
from controlplane.memory import set_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
fixed = set_mmap_threshold(int(sys.argv[1]))
libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 << 20)
print(fixed, libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def probe(threshold: int, **env: str) -> tuple[bool, int]:
    environment = {key: value for key, value in os.environ.items() if key not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    environment.update(env)
    output = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)], capture_output=True, text=True, check=True, env=environment
    ).stdout.split()
    return output[0] == "True", int(output[1])


@glibc_only
def test_fixed_threshold_maps_large_block():
    fixed, mapped = probe(1 << 20)

    assert fixed
    assert mapped >= 2 << 20


@glibc_only
def test_default_threshold_keeps_block_in_heap():
    fixed, mapped = probe(0)

    assert not fixed
    assert mapped == 0


@glibc_only
def test_environment_threshold_wins():
    fixed, mapped = probe(1 << 20, MALLOC_MMAP_THRESHOLD_="16777216")

    assert not fixed
    assert mapped == 0


def test_threshold_zero_sets_nothing():
    assert set_mmap_threshold(0) is False
