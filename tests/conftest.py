"""Shared fixtures. The tests run real pytest sessions through pytester; every session that
traces runs in a subprocess (`runpytest_subprocess`) so the tracer never competes with this one.
"""

import sys

import pytest

pytest_plugins = "pytester"

BACKENDS = [
    pytest.param("settrace", id="settrace"),
    pytest.param(
        "monitoring",
        id="monitoring",
        marks=pytest.mark.skipif(
            sys.version_info < (3, 12), reason="sys.monitoring needs Python 3.12 or later"
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each tracing backend in turn: settrace everywhere, sys.monitoring on 3.12+."""
    return request.param


@pytest.fixture(autouse=True)
def _inner_sessions_in_file_order(request: pytest.FixtureRequest) -> None:
    """pytest-randomly (installed for the compatibility tests) would shuffle every inner session
    and reseed `random` (and the order changes what glibc's allocator has cached, so the
    numbers); they run in file order unless a test is marked `shuffled`."""
    if "pytester" in request.fixturenames and request.node.get_closest_marker("shuffled") is None:
        request.getfixturevalue("pytester").plugins.append("no:randomly")
