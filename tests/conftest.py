import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test tensors are tiny: extra intra-op threads only add overhead (badly so on a shared 2-core
    machine, where two spinning threads made some tests 10x slower). Session scope, so module-scoped
    fixtures and the tests that compare against them (bitwise loss curves) run at the same thread count.
    Subprocess tests are unaffected."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _restore_thread_budget():
    """``emodifftalk.cli.main`` applies a thread budget (torch + OMP/MKL environment); a test that
    calls it must not change the thread count of the tests after it."""
    import os

    n = torch.get_num_threads()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    yield
    torch.set_num_threads(n)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
