"""fastload._cli_options: --storage-option as defined and parsed for every tool, against a plain dict."""

from __future__ import annotations

import argparse

import pytest

from fastload._cli_options import add_storage_option, parse_storage_options
from fastload.errors import ConfigError


def test_storage_options_parse_to_a_dict():
    p = argparse.ArgumentParser()
    add_storage_option(p, "data store")
    args = p.parse_args(["--storage-option", "anon=true", "--storage-option", " endpoint_url = http://h:9/?a=b "])
    assert parse_storage_options(args.storage_option) == {"anon": "true", "endpoint_url": "http://h:9/?a=b"}
    assert parse_storage_options(p.parse_args([]).storage_option) is None
    assert "remote data store" in p.format_help()


@pytest.mark.parametrize("item", ["anon", "=true"])
def test_bad_storage_option_names_the_flag(item):
    with pytest.raises(ConfigError, match=rf"--storage-option: expected KEY=VALUE, got '{item}'"):
        parse_storage_options([item])


def test_inspect_rejects_a_bad_storage_option(tmp_path, capsys):
    from fastload.inspect import main

    assert main([str(tmp_path / "s.zarr"), "--storage-option", "anon"]) == 2
    assert "--storage-option: expected KEY=VALUE" in capsys.readouterr().err
