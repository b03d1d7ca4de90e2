"""Configuration: the shipped file, environment overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.nodes import ROOT, free_port
from node.config import DEFAULT_CONFIG, Settings, load_settings
from node.settings_loader import ConfigError


def test_shipped_config_equals_the_built_in_defaults():
    # What an admin reads in config/node.toml is what the node does without it.
    assert load_settings(DEFAULT_CONFIG, env={}) == load_settings("/dev/null", env={})
    s = load_settings(DEFAULT_CONFIG, env={})
    assert s.node.ae_title == "TRAUMA_AI"
    assert s.node.dicom_port == 11112 and s.node.http_port == 8080
    assert s.node.http_bind == "127.0.0.1"
    assert s.completion.quiet_period_s <= 5.0


def test_environment_overrides_every_kind_of_value(tmp_path):
    env = {
        "TRAUMA_NODE_AE_TITLE": "ER_AI",
        "TRAUMA_NODE_DICOM_PORT": "11500",
        "TRAUMA_NODE_STORAGE_FSYNC": "true",
        "TRAUMA_NODE_COMPLETION_QUIET_PERIOD_S": "2.5",
        "TRAUMA_NODE_SELECTION_MODALITIES": "CT, PT",
        "TRAUMA_NODE_PEERS": '[{"ae_title": "CT1", "host": "10.0.0.5"}]',
        "TRAUMA_NODE_PIPELINE_BACKENDS_TRIAGE": "hu-baseline",
    }
    s = load_settings(DEFAULT_CONFIG, env=env)
    assert s.node.ae_title == "ER_AI"
    assert s.node.dicom_port == 11500
    assert s.storage.fsync is True
    assert s.completion.quiet_period_s == 2.5
    assert s.selection.modalities == ["CT", "PT"]
    assert [(p.ae_title, p.host) for p in s.peers] == [("CT1", "10.0.0.5")]


def test_command_line_overrides_environment():
    s = load_settings(DEFAULT_CONFIG, env={"TRAUMA_NODE_DICOM_PORT": "11500"},
                      overrides={"node.dicom_port": 11600})
    assert s.node.dicom_port == 11600


@pytest.mark.parametrize("text, env, expected", [
    ("[node]\nae_titel = 'X'\n", {}, "node.ae_titel: unknown key"),
    ("[node]\ndicom_port = 'eleven'\n", {}, "node.dicom_port: expected an integer"),
    ("[node]\ndicom_port = 70000\n", {}, "node.dicom_port: 70000 is not a TCP port"),
    ("[node]\nae_title = 'THIS_TITLE_IS_TOO_LONG'\n", {}, "node.ae_title"),
    ("[node]\nlog_level = 'LOUD'\n", {}, "node.log_level: 'LOUD' is not one of"),
    ("", {"TRAUMA_NODE_STORAGE_FSYNC": "perhaps"}, "storage.fsync (from $TRAUMA_NODE_STORAGE_FSYNC)"),
    ("[tls]\nenabled = true\n", {}, "tls.certificate: required when tls.enabled is true"),
    ("[[peers]]\nae_title = 'CT1'\n", {}, "peers[0].host: required"),
    ("[[destinations]]\nname='p'\nae_title='PACS'\nhost='h'\nport=104\nobjects=['sc','png']\n",
     {}, "destinations[0].objects: unknown ['png'] (use some of seg, sr, sc, pdf, kos)"),
    ("[[destinations]]\nname='p'\nae_title='PACS'\nhost='h'\nport=104\nobjects=[]\n", {},
     "destinations[0].objects: empty: nothing would be sent"),
    ("[[destinations]]\nname='p'\nae_title='PACS'\nhost='h'\nport=104\n"
     "verify_interrupted='c-move'\n", {},
     "destinations[0].verify_interrupted: 'c-move' is not one of c-find, resend"),
    ("[[destinations]]\nname='p'\nhost='h'\n", {},
     "destinations[0]: needs url (DICOMweb), or ae_title, host and port (DIMSE); missing: "
     "ae_title, port"),
    # DICOMweb destinations (url): one protocol each, https unless said otherwise, secrets
    # named, never written in the file.
    ("[[destinations]]\nname='p'\nurl='https://pacs/dicom-web'\nhost='h'\nport=104\n", {},
     "destinations[0]: give either url (DICOMweb) or ae_title, host and port (DIMSE), not both"),
    ("[[destinations]]\nname='p'\nurl='http://pacs/dicom-web'\n", {},
     "destinations[0].url: http:// sends results (and credentials) unencrypted; use https://, "
     "or set allow_insecure_http = true"),
    ("[[destinations]]\nname='p'\nurl='pacs/dicom-web'\n", {},
     "destinations[0].url: 'pacs/dicom-web' is not an https:// URL"),
    ("[[destinations]]\nname='p'\nurl='https://u:pw@pacs/dicom-web'\n", {},
     "destinations[0].url: no credentials in the URL"),
    ("[[destinations]]\nname='p'\nurl='https://pacs/dicom-web'\nauth='basic'\n"
     "username='u'\n", {},
     "destinations[0]: auth = 'basic' needs exactly one of secret_file, secret_env"),
    ("[[destinations]]\nname='p'\nurl='https://pacs/dicom-web'\nauth='bearer'\n"
     "secret_file='/no/such/token'\n", {},
     "destinations[0].secret_file: file not found: /no/such/token"),
    ("[[destinations]]\nname='p'\nurl='https://pacs/dicom-web'\nauth='digest'\n", {},
     "destinations[0].auth: 'digest' is not one of basic, bearer"),
    ("[[destinations]]\nname='p'\nurl='https://pacs/dicom-web'\n"
     "verify_interrupted='c-find'\n", {},
     "destinations[0].verify_interrupted: 'c-find' is not one of query, resend"),
    ("[[destinations]]\nname='p'\nae_title='PACS'\nhost='h'\nport=104\nauth='basic'\n", {},
     "destinations[0]: auth: for a DICOMweb destination (url) only"),
    ("[completion]\nquiet_period_s = 0\n", {}, "completion.quiet_period_s"),
    ("[workers]\ncount = -1\n", {}, "workers.count: must be 0 or more"),
    ("[selection]\nexclude_series_descriptions = ['(']\n", {},
     "selection.exclude_series_descriptions[0]: bad regular expression"),
    ("[node\n", {}, "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, text, env, expected):
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    assert expected in str(info.value)


def test_check_config_command(tmp_path):
    good = subprocess.run([sys.executable, "-m", "node.cli", "check-config", "--config",
                           str(DEFAULT_CONFIG)], cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "configuration OK" in good.stdout
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[network]\nmax_associations = -1\n")
    bad = subprocess.run([sys.executable, "-m", "node.cli", "check-config", "--config",
                          str(bad_file)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "network.max_associations: must be greater than 0" in bad.stderr


def test_serve_refuses_to_start_with_bad_config(tmp_path):
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[node]\nae_title = ''\n")
    result = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config", str(bad_file),
                             "--data-dir", str(tmp_path / "d")], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "node.ae_title" in result.stderr
    assert not (tmp_path / "d").exists()


def test_defaults_need_no_file():
    assert isinstance(load_settings("/dev/null", env={}), Settings)


def test_serve_fails_at_start_up_when_a_configured_model_is_missing(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('[pipeline.backends]\ntriage = "medsiglip"\n'
                      f'[pipeline.models.medsiglip]\nmodel = "{tmp_path / "no-such-model"}"\n')
    result = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config", str(config),
                             "--data-dir", str(tmp_path / "d"), "--dicom-port", str(free_port())],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "pipeline.models.medsiglip.model" in result.stderr
    assert "DICOM SCP" not in result.stderr  # refused before listening
