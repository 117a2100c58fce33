"""Shared fixtures. ``fast_run_dir`` trains the ``fast`` preset once per test session."""

import pytest


@pytest.fixture(scope="session")
def fast_run_dir(tmp_path_factory):
    """A finished native run of ``TrainConfig.preset("fast")`` (it groks); returns its folder."""
    from grokscope.training import TrainConfig, train

    out = tmp_path_factory.mktemp("fast_preset") / "run"
    train(TrainConfig.preset("fast"), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_config():
    """A config that trains in about a second (60 epochs, far from memorising: a plumbing check)."""
    from grokscope.training import TrainConfig

    return TrainConfig.preset("fast", p=13, d_model=16, frac=0.5, epochs=60, checkpoint_every=10, log_every=5)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_config):
    """A finished native run of ``tiny_config``; tests must not modify it (copy it first)."""
    from grokscope.training import train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    train(tiny_config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the whole test session; skipped where ray is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
