"""Typed settings: every section read from the packaged YAML and the environment, a wrong value
refused when the settings are read, with the key it belongs to; ``aquamask serve`` refuses to
start on one."""
from __future__ import annotations

import subprocess
import sys

import pytest

from aquamask.processes.errors import ConfigError
from aquamask.processes.settings import SECTIONS, Settings


def load(tmp_path, **overrides: str) -> Settings:
    return Settings.load(environ={"AQUAMASK__HOME": str(tmp_path), **overrides})


def test_every_section_is_typed_from_the_packaged_defaults(tmp_path):
    settings = load(tmp_path)
    for name, section in SECTIONS.items():
        assert isinstance(getattr(settings, name), section)
    assert settings.jobs.max_running == 2 and settings.limits.href_schemes == ["http", "https"]
    assert "local" in settings.sources.entries and settings.sources.http.retries == 4
    assert Settings(settings.portable()).jobs == settings.jobs  # what a Dask task carries


@pytest.mark.parametrize("key, value, message", [
    ("JOBS__MAX_RUNNING", "x", "jobs.max_running: input should be a valid integer"),
    ("JOBS__MAX_RUNNING", "0", "jobs.max_running: input should be greater than or equal to 1"),
    ("LIMITS__HREF_SCHEMES", "https", "limits.href_schemes: input should be a valid list"),
    ("DETECTION__THRESHOLD", "1.5", "detection.threshold"),
    ("SOURCES__HTTP", "{retries: 3}", "sources.http.backoff: missing"),
    ("MONITORING__SCHEDULER", "processes", "monitoring.scheduler must be"),
])
def test_a_wrong_value_is_refused_naming_its_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load(tmp_path, **{f"AQUAMASK__{key}": value})


def test_settings_are_read_only(tmp_path):
    settings = load(tmp_path)
    with pytest.raises(AttributeError):
        settings.jobs = settings.jobs
    with pytest.raises(Exception):  # a frozen section
        settings.jobs.max_running = 3


def test_serve_refuses_a_bad_configuration_before_starting(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "aquamask.server.cli", "serve"], capture_output=True, text=True,
        timeout=60, env={"AQUAMASK__HOME": str(tmp_path), "AQUAMASK__JOBS__MAX_RUNNING": "x",
                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "jobs.max_running: input should be a valid integer" in result.stderr


def test_the_model_is_named_from_the_allow_listed_folders(tmp_path):
    from aquamask.processes.pipeline import methods
    settings = load(tmp_path, AQUAMASK__DETECTION__MODEL="unet-s2-water-1.1.0",
                    AQUAMASK__DETECTION__DEVICE="cpu")
    assert methods.model_for("unet", settings).version == "1.1.0"
    for name in ("no-such-model", "/tmp/x.pt"):
        with pytest.raises(ConfigError, match="detection.model"):
            methods.load_model(name, "cpu", str(tmp_path))
