import pytest
from dataeff.models import tiny_model


@pytest.fixture(scope="session")
def tiny():
    "A randomly initialised two-layer Llama with a ChatML byte-level BPE tokenizer: (model, tokenizer), no download."
    return tiny_model(seed=0)
