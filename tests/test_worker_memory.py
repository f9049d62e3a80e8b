"""A relay worker keeps freed memory for the next message (`supervisor.keep_freed_memory`):
buffers of a few hundred KiB allocated and freed in rounds, as message bodies are, fault no
fresh pages in once the first round has grown the heap; with glibc's defaults every round
trims the heap and faults its pages in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

ROUNDS = """
import resource, sys
from deliverypool.supervisor import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() is True
def rounds():
    for _ in range(20):
        blocks = [bytearray(300_000) for _ in range(40)]  # 12 MB live, then freed
        del blocks
rounds()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True, timeout=120)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_reuses_freed_buffers_instead_of_faulting_pages_in_again() -> None:
    default, kept = _faults("default"), _faults("keep")
    # 20 rounds of 12 MB: about 58,000 faults with the defaults, none once the memory is kept.
    assert default > 20_000
    assert kept < default / 20
