"""The resumable downloader against a real local HTTP server with injected faults."""
from __future__ import annotations

import pytest

from balanceroute.data.download import download
from balanceroute.data.errors import DownloadError

SIZE = 300_000  # several read chunks


def test_fresh_download_writes_the_whole_file_in_one_plain_request(server, tmp_path):
    data = server.add("f.bin", SIZE)
    part = tmp_path / "f.bin.part"
    assert download(server.url("f.bin"), part, backoff_s=0) == SIZE
    assert part.read_bytes() == data
    assert [(r.range, r.status) for r in server.requests] == [(None, 200)]


def test_dropped_connection_is_retried_with_a_range_for_only_the_remainder(server, tmp_path):
    data = server.add("f.bin", SIZE)
    server.fail_next("f.bin", "drop")
    part = tmp_path / "f.bin.part"
    assert download(server.url("f.bin"), part, retries=1, backoff_s=0) == SIZE
    assert part.read_bytes() == data
    first, second = server.requests
    assert (first.status, first.sent) == (200, SIZE // 2)
    assert second.range == f"bytes={SIZE // 2}-"
    assert (second.status, second.sent) == (206, SIZE - SIZE // 2)


def test_server_ignoring_range_restarts_the_file_cleanly(server, tmp_path):
    data = server.add("f.bin", SIZE)
    server.fail_next("f.bin", "ignore_range")
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"x" * 1000)  # not a prefix of the file: must not survive a 200 answer
    download(server.url("f.bin"), part, backoff_s=0)
    assert part.read_bytes() == data
    assert [(r.range, r.status) for r in server.requests] == [("bytes=1000-", 200)]


def test_unsatisfiable_range_discards_the_partial_file_and_starts_over(server, tmp_path):
    data = server.add("f.bin", SIZE)
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"x" * (SIZE + 10))
    download(server.url("f.bin"), part, backoff_s=0)
    assert part.read_bytes() == data
    assert [r.status for r in server.requests] == [416, 200]


def test_persistent_server_error_gives_up_after_the_retries_and_names_the_status(server, tmp_path):
    server.add("f.bin", SIZE)
    server.fail_next("f.bin", "500", "500", "500")
    with pytest.raises(DownloadError, match=r"HTTP 500 .*gave up after 3 attempt"):
        download(server.url("f.bin"), tmp_path / "f.bin.part", retries=2, backoff_s=0)
    assert [r.status for r in server.requests] == [500, 500, 500]


def test_missing_remote_file_fails_at_once_without_creating_a_partial_file(server, tmp_path):
    part = tmp_path / "nope.part"
    with pytest.raises(DownloadError, match=r"HTTP 404 .*/nope"):
        download(server.url("nope"), part, retries=3, backoff_s=0)
    assert len(server.requests) == 1
    assert not part.exists()


def test_resume_follows_a_redirect_keeping_the_range(server, tmp_path):
    data = server.add("f.bin", SIZE)
    part = tmp_path / "f.bin.part"
    part.write_bytes(data[:1234])
    download(server.url("redirect/f.bin"), part, backoff_s=0)
    assert part.read_bytes() == data
    assert [(r.path, r.range, r.status) for r in server.requests] == [
        ("redirect/f.bin", "bytes=1234-", 302), ("f.bin", "bytes=1234-", 206)]
    assert server.requests[1].sent == SIZE - 1234


def test_unreachable_host_is_reported_with_the_url(tmp_path):
    with pytest.raises(DownloadError, match=r"cannot connect .*http://127\.0\.0\.1:9/x"):
        download("http://127.0.0.1:9/x", tmp_path / "x.part", retries=0, backoff_s=0, timeout_s=2)
