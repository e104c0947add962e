import os
import pytest
from dataeff.core import reference_dir
from dataeff.models import tiny_model


@pytest.fixture(scope="session")
def tiny():
    "A randomly initialised two-layer Llama with a ChatML byte-level BPE tokenizer: (model, tokenizer), no download."
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def reference():
    "The authors' released data folder; missing, it fails the test under CI and skips it elsewhere."
    ref = reference_dir()
    if ref is None:
        if os.environ.get("CI"): pytest.fail("reference data missing in CI (set DATAEFF_REFERENCE)")
        pytest.skip("reference data not available")
    return ref
