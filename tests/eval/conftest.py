import pytest


@pytest.fixture
def eval_stages():
    """The scoring test tagger (tests/support/evalstages.py), registered for this test."""
    import evalstages

    with evalstages.registered():
        yield evalstages
