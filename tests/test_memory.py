"""keep_freed_memory: a large block freed and allocated again is served from the heap, without
the kernel faulting fresh pages in (the cost it removes from every training step), unless the
user opts out. Each case runs in its own process: the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocates and fills a 256 MB array twice; prints the page faults of the second round.
PROBE = """
import resource, sys
import numpy as np
from affcli.memory import keep_freed_memory
on = keep_freed_memory()
a = np.ones(64 << 20, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(64 << 20, np.float32)
print(int(on), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env: dict[str, str]) -> tuple[bool, int]:
    import os

    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_new_page_faults_unless_opted_out():
    on, faults_kept = _probe({"AFFCLI_MALLOC": ""})
    off, faults_system = _probe({"AFFCLI_MALLOC": "system"})
    assert on and not off
    # 256 MB are 65,536 pages of 4 KB, or 128 transparent huge pages of 2 MB
    assert faults_kept < 16, faults_kept
    # glibc's default maps a fresh block and the kernel faults its pages in again
    assert faults_system > 100, (faults_system, faults_kept)
    # a MALLOC_*_ variable the user set wins over affcli's setting
    user, _ = _probe({"AFFCLI_MALLOC": "", "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert not user
