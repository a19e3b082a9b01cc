"""Fixtures shared by several test files."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: on the shared 2-core machine, two threads next to
    another job ran tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_shards():
    """scripts/make_shards.py as a module (scripts/ is not a package): make_shards.main(argv)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_shards.py"
    spec = importlib.util.spec_from_file_location("make_shards", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
