"""mergetheory.experiment.keep_freed_memory: glibc's mallopt, applied where it exists."""

import platform
import sys

from mergetheory.experiment import keep_freed_memory


def test_applied_exactly_on_linux_glibc():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc
