import platform
import subprocess
import sys
import textwrap

import pytest

from fer_fastai.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory, on_glibc


class FakeLibc:
    def __init__(self, accepts: bool = True):
        self.calls, self.accepts = [], accepts

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return int(self.accepts)


def test_both_thresholds_are_raised_because_setting_one_freezes_the_other():
    libc = FakeLibc()
    assert keep_freed_memory(libc) is True
    assert [parameter for parameter, _ in libc.calls] == [M_MMAP_THRESHOLD, M_TRIM_THRESHOLD]
    assert all(value >= 32 * 2**20 for _, value in libc.calls)


def test_a_refused_setting_is_reported():
    assert keep_freed_memory(FakeLibc(accepts=False)) is False


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert keep_freed_memory() is False


@pytest.mark.skipif(not on_glibc(), reason="glibc only")
def test_freed_training_sized_buffers_are_reused_without_page_faults():
    """Three 25 MB buffers allocated and freed over and over, as a training step's activations are:
    with glibc's defaults each round faults ~1,300 pages back in (measured on the reference machine);
    after keep_freed_memory none. Run in a fresh interpreter, so earlier tests' heap does not count."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        from fer_fastai.allocator import keep_freed_memory
        assert keep_freed_memory()
        def step():
            buffers = [np.ones(25 * 2**20, np.uint8) for _ in range(3)]
            del buffers
        step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            step()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
    """)
    faults_per_step = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                         check=True).stdout)
    assert faults_per_step < 100
