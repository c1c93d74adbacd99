"""`balanceroute prepare-data` end to end: the real entry point, a conf/ tree pointing at a local HTTP server."""
from __future__ import annotations

import hashlib

import pytest

SIZE = 250_000


@pytest.fixture
def setup(server, tmp_path, make_conf):
    """Two datasets served locally; the conf's data_dir is tmp/data."""
    data = {"a.csv": server.add("a.csv", SIZE, seed=1), "b.json": server.add("b.json", SIZE // 3, seed=2)}
    conf = make_conf(tmp_path / "conf", {
        "trace_a": {"url": server.url("a.csv"), "file": "a.csv", "sha256": None},
        "share_b": {"url": server.url("b.json"), "file": "b.json", "sha256": None},
    }, models={"sim_small": None}, data_dir=tmp_path / "data")
    return conf, tmp_path / "data", data


def test_fresh_download_places_files_and_reports_sizes_checksums_and_overrides(setup, cli_main, capsys):
    conf, data_dir, data = setup
    assert cli_main(["prepare-data", "--config-dir", str(conf)]) == 0
    out = capsys.readouterr().out
    for name, payload in data.items():
        assert (data_dir / name).read_bytes() == payload
        assert hashlib.sha256(payload).hexdigest() in out
        assert (data_dir / f"{name}.sha256").exists()
    assert "a.csv  244.1 KiB" in out and "(downloaded)" in out
    assert f"python run.py workload=trace_a data.data_dir={data_dir}" in out
    assert f"python run.py workload=share_b data.data_dir={data_dir}" in out


def test_interrupted_download_leaves_only_a_part_file_and_the_rerun_fetches_the_remainder(
        setup, server, cli_main, capsys):
    conf, data_dir, data = setup
    server.fail_next("a.csv", "drop")
    args = ["prepare-data", "--config-dir", str(conf), "--datasets", "trace_a", "--retries", "0"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "error: trace_a: a.csv: " in err
    assert f"{SIZE // 2} bytes kept in {data_dir / 'a.csv.part'}, run the command again to resume" in err
    assert not (data_dir / "a.csv").exists()
    assert (data_dir / "a.csv.part").stat().st_size == SIZE // 2

    assert cli_main(args) == 0
    assert (data_dir / "a.csv").read_bytes() == data["a.csv"]
    assert not (data_dir / "a.csv.part").exists()
    resumed = server.requests[-1]
    assert (resumed.range, resumed.status, resumed.sent) == (f"bytes={SIZE // 2}-", 206, SIZE - SIZE // 2)


def test_corrupted_file_is_detected_by_its_checksum_and_fetched_again(setup, server, cli_main, capsys):
    conf, data_dir, data = setup
    args = ["prepare-data", "--config-dir", str(conf), "--datasets", "trace_a"]
    assert cli_main(args) == 0
    with open(data_dir / "a.csv", "r+b") as f:
        f.seek(SIZE // 2)
        f.write(b"\0\0\0")
    capsys.readouterr()
    assert cli_main(args) == 0
    assert (data_dir / "a.csv").read_bytes() == data["a.csv"]
    assert "(downloaded)" in capsys.readouterr().out
    assert [r.path for r in server.requests] == ["a.csv", "a.csv"]


def test_server_error_is_reported_with_nothing_under_the_final_name(setup, server, cli_main, capsys):
    conf, data_dir, data = setup
    server.fail_next("b.json", "500")
    rc = cli_main(["prepare-data", "--config-dir", str(conf), "--retries", "0"])
    assert rc == 1
    captured = capsys.readouterr()
    assert f"share_b: b.json: HTTP 500 Internal Server Error from {server.url('b.json')}" in captured.err
    assert not (data_dir / "b.json").exists() and not (data_dir / "b.json.sha256").exists()
    assert (data_dir / "a.csv").read_bytes() == data["a.csv"]  # the other dataset still arrived
    assert "a.csv" in captured.out


def test_offline_missing_file_names_it_and_the_command_that_fetches_it(setup, server, cli_main, capsys):
    conf, data_dir, _ = setup
    assert cli_main(["prepare-data", "--config-dir", str(conf), "--datasets", "trace_a"]) == 0
    capsys.readouterr()
    assert cli_main(["prepare-data", "--config-dir", str(conf), "--offline"]) == 1
    captured = capsys.readouterr()
    assert f"{data_dir / 'b.json'} (share_b): missing" in captured.err
    assert f"fetch with: balanceroute prepare-data --datasets share_b --dest {data_dir}" in captured.err
    assert "(verified)" in captured.out  # the present file was checked, not fetched
    assert len(server.requests) == 1


def test_dest_overrides_the_configured_data_dir(setup, tmp_path, cli_main):
    conf, data_dir, data = setup
    dest = tmp_path / "elsewhere"
    assert cli_main(["prepare-data", "--config-dir", str(conf), "--datasets", "share_b", "--dest", str(dest)]) == 0
    assert (dest / "b.json").read_bytes() == data["b.json"]
    assert not data_dir.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--datasets", "trace_a,nope"], "unknown dataset 'nope'; valid: share_b, trace_a"),
    (["--models", "nope"], "unknown model 'nope'; valid: (none configured)"),
    (["--models", "sim_small"], "model 'sim_small' is a simulator-only preset (its yaml has no hf_repo)"),
    (["--offline", "--force"], "--offline and --force contradict each other"),
    (["--datasets", ","], "nothing to prepare"),
])
def test_bad_selection_exits_2_naming_the_problem_and_fetches_nothing(setup, server, cli_main, capsys, args,
                                                                       message):
    conf, _, _ = setup
    assert cli_main(["prepare-data", "--config-dir", str(conf), *args]) == 2
    assert message in capsys.readouterr().err
    assert server.requests == []
