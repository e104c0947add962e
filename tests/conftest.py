import os
from pathlib import Path
import pytest
from dataeff.models import tiny_model
from dataeff.paper import PAPER_DATA_ENV, paper_data

# The authors' release beside the checkout (../shared/reference/paper-results) stands in for $DATAEFF_PAPER_DATA when that is unset,
# so no test downloads it; set here, at import, it is seen by every test module (tests/test_curves.py reads it when collected).
_BESIDE = Path(__file__).resolve().parent.parent.parent/"shared"/"reference"/"paper-results"
if not os.environ.get(PAPER_DATA_ENV) and _BESIDE.is_dir(): os.environ[PAPER_DATA_ENV] = str(_BESIDE)


def reference_data():
    "The authors' released data folder (`paper_data()`), or None when $DATAEFF_PAPER_DATA names none."
    return paper_data() if os.environ.get(PAPER_DATA_ENV) else None


@pytest.fixture(scope="session")
def tiny():
    "A randomly initialised two-layer Llama with a ChatML byte-level BPE tokenizer: (model, tokenizer), no download."
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def reference():
    "The authors' released data folder; missing, it fails the test under CI and skips it elsewhere."
    ref = reference_data()
    if ref is None:
        if os.environ.get("CI"): pytest.fail(f"reference data missing in CI (set {PAPER_DATA_ENV})")
        pytest.skip("reference data not available")
    return ref
