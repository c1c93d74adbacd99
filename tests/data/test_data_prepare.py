"""prepare_dataset: reuse, checksum recording and verification, atomic placement (real local HTTP server)."""
from __future__ import annotations

import hashlib

import pytest

from balanceroute.data import checksums, prepare
from balanceroute.data.catalog import DatasetSpec
from balanceroute.data.errors import DownloadError, MissingDataError
from balanceroute.data.prepare import DOWNLOADED, RECORDED, UNRECORDED, VERIFIED, prepare_dataset

SIZE = 200_000


def _spec(server, sha256=None, name="trace"):
    return DatasetSpec(name=name, url=server.url("t.csv"), file="t.csv", sha256=sha256)


def test_download_records_a_sha256sum_sidecar_and_leaves_no_partial_file(server, tmp_path):
    data = server.add("t.csv", SIZE)
    result = prepare_dataset(_spec(server), tmp_path / "d", backoff_s=0)
    digest = hashlib.sha256(data).hexdigest()
    assert (result.status, result.size, result.sha256) == (DOWNLOADED, SIZE, digest)
    assert result.path.read_bytes() == data
    assert (tmp_path / "d" / "t.csv.sha256").read_text() == f"{digest}  t.csv\n"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["t.csv", "t.csv.sha256"]


def test_verified_copy_is_reused_without_any_request(server, tmp_path):
    server.add("t.csv", SIZE)
    prepare_dataset(_spec(server), tmp_path, backoff_s=0)
    requests = len(server.requests)
    assert prepare_dataset(_spec(server), tmp_path, backoff_s=0).status == VERIFIED
    assert prepare_dataset(_spec(server), tmp_path, offline=True).status == VERIFIED
    assert len(server.requests) == requests


def test_pinned_checksum_mismatch_keeps_nothing(server, tmp_path):
    server.add("t.csv", SIZE)
    with pytest.raises(DownloadError, match=r"t\.csv: downloaded file has sha256 .* but the config pins 0{64}"):
        prepare_dataset(_spec(server, sha256="0" * 64), tmp_path, backoff_s=0)
    assert list(tmp_path.iterdir()) == []


def test_file_placed_by_hand_gets_its_checksum_recorded_or_checked_against_the_pin(server, tmp_path):
    data = server.add("t.csv", SIZE)
    (tmp_path / "t.csv").write_bytes(data)
    assert prepare_dataset(_spec(server), tmp_path, offline=True).status == RECORDED
    assert checksums.read_recorded(tmp_path / "t.csv") == hashlib.sha256(data).hexdigest()
    (tmp_path / "t.csv.sha256").unlink()
    pinned = _spec(server, sha256=hashlib.sha256(data).hexdigest())
    assert prepare_dataset(pinned, tmp_path, offline=True).status == VERIFIED
    assert server.requests == []


def test_read_only_data_dir_still_verifies(server, tmp_path, monkeypatch):
    data = server.add("t.csv", SIZE)
    (tmp_path / "t.csv").write_bytes(data)

    def refuse(path, digest):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(prepare.checksums, "record", refuse)
    assert prepare_dataset(_spec(server), tmp_path, offline=True).status == UNRECORDED


def test_offline_corrupted_file_is_reported_not_fetched(server, tmp_path):
    server.add("t.csv", SIZE)
    prepare_dataset(_spec(server), tmp_path, backoff_s=0)
    with open(tmp_path / "t.csv", "r+b") as f:
        f.write(b"#")
    with pytest.raises(MissingDataError, match=r"t\.csv \(trace\): fails its sha256 checksum"):
        prepare_dataset(_spec(server), tmp_path, offline=True)
    assert len(server.requests) == 1


def test_force_downloads_again_and_replaces_the_file(server, tmp_path):
    server.add("t.csv", SIZE, seed=1)
    prepare_dataset(_spec(server), tmp_path, backoff_s=0)
    new = server.add("t.csv", SIZE, seed=2)
    assert prepare_dataset(_spec(server), tmp_path, force=True, backoff_s=0).status == DOWNLOADED
    assert (tmp_path / "t.csv").read_bytes() == new
    assert checksums.read_recorded(tmp_path / "t.csv") == hashlib.sha256(new).hexdigest()


def test_offline_and_force_together_are_rejected(server, tmp_path):
    with pytest.raises(ValueError, match="--offline and --force"):
        prepare_dataset(_spec(server), tmp_path, offline=True, force=True)
