"""The pytest plugin: ``pytest --memline``. The hooks only; the work is done elsewhere.

Module-level hooks only add options and markers and decide whether the plugin is on; all the
work is done by one ``MemlinePlugin`` object (``_manager``) registered in ``pytest_configure``
when it is. With the plugin off, no native code is imported and no hook of the manager runs.

- ``_keys``: the settings' table (options, config keys); ``_settings``: the resolver;
- ``_measure``: tracing one test and judging it (budgets, baseline, re-measurement);
- ``_isolate``: ``isolate = "fork"``; ``_gate``: baselines; ``_results``: the run's results,
  which the terminal summary and ``_report`` (JSON, Markdown) read.

Under pytest-xdist every worker traces its own tests and checks their budgets and baselines;
the measured tables travel to the controller on the test reports (``report.memline``), and the
controller alone prints the summary and writes baselines and reports.
"""

from __future__ import annotations

import pytest

from pytest_memline import _preflight
from pytest_memline._preflight import MARKER_DOC

PLUGIN_NAME = "memline-manager"


def pytest_addoption(parser: pytest.Parser) -> None:
    from pytest_memline import _keys

    _keys.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    from pytest_memline import _keys

    option = config.getoption("memline", None)
    given = _keys.given_options(config.option)
    turning_on = [k.option for k in given if k.name in _keys.TURNS_ON]
    if option is False:
        if turning_on:
            raise pytest.UsageError(
                f"memline: {turning_on[0]} needs tracing, and --no-memline turns it off"
            )
        return
    path = _preflight.find_pyproject(config.rootpath)
    table, display = _preflight.read_config(path) if option or path else (None, None)
    if not _preflight.enabled_from(option, table):
        if not turning_on:
            for key in given:
                config.issue_config_time_warning(
                    pytest.PytestConfigWarning(
                        f"memline: {key.option} has no effect: tracing is off (add --memline, "
                        "or enabled = true in [tool.memline])"
                    ),
                    stacklevel=2,
                )
            return
    from pytest_memline import _settings

    settings = _settings.resolve(
        config.option, table, display, config.rootpath, config.invocation_params.dir
    )
    from pytest_memline import _memline

    try:
        probe = _memline.probe_reader(settings.reader, settings.peak)
    except RuntimeError as exc:
        # no RSS to read here (no /proc, say): run the tests untraced and say so once
        from pytest_memline._manager import Unavailable

        config.pluginmanager.register(Unavailable(str(exc)), PLUGIN_NAME)
        return
    from pytest_memline._manager import MemlinePlugin

    plugin = MemlinePlugin(config, settings, probe)
    if turning_on and not _preflight.enabled_from(option, table):
        plugin.turned_on_by = turning_on[0]
    config.pluginmanager.register(plugin, PLUGIN_NAME)
