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
