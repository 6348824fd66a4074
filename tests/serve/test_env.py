"""The environments: the main suite runs on what `pip install 'cmrt[cpu]'` gives users (numpy 2);
the serving extra (nvidia-pytriton 0.7, numpy < 2) lives in its own venv (`make setup-serve`)."""
import numpy as np
import pytest

from tests.conftest import serve_run


def test_main_env_has_numpy_2():
    if serve_run():
        pytest.skip("the serving venv pins numpy < 2 (nvidia-pytriton 0.7); this checks the main venv")
    major = int(np.__version__.split(".")[0])
    assert major >= 2, (
        f"numpy {np.__version__} in {np.__file__}: the main suite must run on numpy >= 2, what `pip install 'cmrt[cpu]'` "
        "installs (`make setup` makes .venv so; serving tests run in .venv-serve, `make test-serve`)"
    )


def test_serve_marker_is_registered(pytestconfig):
    assert any(m.startswith("serve:") for m in pytestconfig.getini("markers"))
