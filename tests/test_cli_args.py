"""The argparse value types every subcommand shares: what they accept, and the one-line error otherwise."""
from __future__ import annotations

import argparse

import pytest

from balanceroute.cli_args import int_at_least, key_value, positive_number


@pytest.mark.parametrize("text, expected", [
    ("K=3", ("K", 3)), ("H=0.5", ("H", 0.5)), ("predictor=exact_match", ("predictor", "exact_match")),
    ("prior_lengths=[10, 20]", ("prior_lengths", [10, 20])), (" seed =7", ("seed", 7)), ("x=", ("x", "")),
    ("flag=true", ("flag", True)),
])
def test_key_value_reads_json_values_and_keeps_words(text, expected):
    assert key_value(text) == expected


@pytest.mark.parametrize("text", ["K", "=3", ""])
def test_key_value_rejects_text_without_a_key(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"must look like KEY=VALUE, got {text!r}"):
        key_value(text)


def test_int_at_least_checks_its_bounds():
    port = int_at_least(0, 65535)
    assert port("0") == 0 and port("65535") == 65535
    for bad in ("-1", "65536", "8.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be an integer from 0 to 65535, got '{bad}'"):
            port(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 1, got '0'"):
        int_at_least(1)("0")


def test_positive_number_takes_inf_only_when_asked():
    assert positive_number()("0.25") == 0.25
    assert positive_number(finite=False)("inf") == float("inf")
    for bad in ("0", "-2", "nan", "inf", "fast"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be a number > 0, got {bad!r}"):
            positive_number()(bad)


def test_a_subcommand_reports_a_bad_value_in_one_line_naming_the_option(capsys):
    from balanceroute.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["emulate", "--ranks", "0"])
    assert exit_.value.code == 2
    assert "balanceroute emulate: error: argument --ranks: must be an integer >= 1, got '0'" in capsys.readouterr().err
