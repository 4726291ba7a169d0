"""Checkpoint downloads against a local HTTP server on 127.0.0.1: verification, resume with Range, errors."""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from upstream import download as dl

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte position distinct modulo 256
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """A tiny file server: ``/file`` honours ``Range``; ``drop_after`` cuts the first response short,
    ``no_range`` ignores ``Range`` (sends 200 with the whole file). Records each request's Range header."""

    def __init__(self):
        self.ranges: list[str | None] = []
        self.drop_after: int | None = None
        self.no_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                if self.path != "/file":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = 0
                if rng and not server.no_range:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_after is not None:
                    cut, server.drop_after = server.drop_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    with _Server() as s:
        yield s


def _entry(url, **kw):
    return dl.OfficialCheckpoint("toy", "toy.pth", (url,), "tests", **kw)


def test_download_verifies_and_saves_under_the_registry_name(server, tmp_path):
    path = dl.download(_entry(server.url, size_bytes=len(PAYLOAD), sha256=SHA), tmp_path, log=lambda _: None)
    assert path == tmp_path / "toy.pth" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "toy.pth.part").exists()
    assert server.ranges == [None]
    # a second call finds the verified file and does not download again
    lines = []
    dl.download(_entry(server.url, sha256=SHA), tmp_path, log=lines.append)
    assert server.ranges == [None] and "already there and verified" in lines[0]


def test_a_dropped_connection_resumes_with_range(server, tmp_path):
    server.drop_after = 300_000
    lines = []
    path = dl.download(_entry(server.url, sha256=SHA), tmp_path, log=lines.append)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=300000-"]  # the second request continues where the first stopped
    assert any("resuming" in line for line in lines)


def test_a_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "toy.pth.part").write_bytes(PAYLOAD[:123_456])
    dl.download(_entry(server.url, size_bytes=len(PAYLOAD)), tmp_path, log=lambda _: None)
    assert server.ranges == ["bytes=123456-"]
    assert (tmp_path / "toy.pth").read_bytes() == PAYLOAD


def test_a_server_without_range_support_sends_the_whole_file_again(server, tmp_path):
    server.no_range = True
    (tmp_path / "toy.pth.part").write_bytes(b"x" * 1000)  # junk that must not stay at the front
    dl.download(_entry(server.url, sha256=SHA), tmp_path, log=lambda _: None)
    assert (tmp_path / "toy.pth").read_bytes() == PAYLOAD


def test_a_complete_partial_file_is_finished_without_a_body(server, tmp_path):
    (tmp_path / "toy.pth.part").write_bytes(PAYLOAD)  # killed after the last byte, before the rename
    dl.download(_entry(server.url, sha256=SHA), tmp_path, log=lambda _: None)
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"] and (tmp_path / "toy.pth").read_bytes() == PAYLOAD


def test_a_wrong_sha256_or_size_is_deleted_not_installed(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="has sha256 .* expected 0{64}; it was deleted"):
        dl.download(_entry(server.url, sha256="0" * 64), tmp_path, log=lambda _: None)
    assert not (tmp_path / "toy.pth").exists() and not (tmp_path / "toy.pth.part").exists()
    with pytest.raises(dl.DownloadError, match=f"server offers {len(PAYLOAD)} bytes, the table records 5"):
        dl.download(_entry(server.url, size_bytes=5), tmp_path, log=lambda _: None)
    (tmp_path / "toy.pth").write_bytes(b"not it")
    with pytest.raises(dl.DownloadError, match="is there but has sha256 .*--force"):
        dl.download(_entry(server.url, sha256=SHA), tmp_path, log=lambda _: None)
    dl.download(_entry(server.url, sha256=SHA), tmp_path, force=True, log=lambda _: None)
    assert (tmp_path / "toy.pth").read_bytes() == PAYLOAD


def test_unreachable_and_missing_urls_fail_with_one_line(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download(_entry(server.url.replace("/file", "/nope")), tmp_path, log=lambda _: None)
    port = server.httpd.server_address[1]
    server.__exit__()  # nothing listens any more
    with pytest.raises(dl.DownloadError, match="cannot connect"):
        dl.download(_entry(f"http://127.0.0.1:{port}/file"), tmp_path, timeout_s=2, log=lambda _: None)


def test_cli_downloads_a_table_entry_from_a_mirror(server, tmp_path, monkeypatch, capsys):
    from benchmark.__main__ import main

    entry = dl.find("ssast_patch_400")
    monkeypatch.setattr(dl, "released", lambda: (replace(entry, sha256=SHA, size_bytes=len(PAYLOAD)),))
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(tmp_path))
    assert main(["download", "ssast_patch_400", "--url", server.url]) == 0
    assert (tmp_path / "SSAST-Base-Patch-400.pth").read_bytes() == PAYLOAD
    assert main(["download", "--list"]) == 0
    assert re.search(r"ssast_patch_400 .* SSAST-Base-Patch-400.pth .* here", capsys.readouterr().out)
    assert main(["download", "nope"]) == 2
    assert "no released checkpoint called 'nope'" in capsys.readouterr().err


def test_table_urls_are_the_published_ones_and_missing_checkpoint_errors_point_to_the_command(tmp_path,
                                                                                             monkeypatch):
    import upstream

    names = {e.name for e in dl.released()}
    registered = set(upstream.list_upstreams())
    for entry in dl.released():
        assert all(u.startswith("https://") for u in entry.urls), entry.name
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    # every released upstream of the registry is downloadable under the file name it looks up
    assert {"ssast_patch_400", "ssast_frame_400", "mae_ast_patch", "mae_ast_frame"} <= names & registered
    assert dl.find("SSAST-Base-Patch-100.pth").urls[0].endswith("audio_model_100m.pth?dl=1")
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m benchmark download mae_ast_patch"):
        upstream.load("mae_ast_patch")
    with pytest.raises(FileNotFoundError) as err:  # no release: no download to point to
        upstream.load("ssast_frame_100")
    assert "download" not in str(err.value)


def test_the_table_is_every_family_s_releases():
    """Each family declares its own releases (FamilySpec.releases): the table is their union, one row per
    file, and a released upstream of a family is registered in that family."""
    import upstream

    table = dl.released()
    assert table == tuple(e for f in upstream.families() for e in f.releases)
    assert len({e.file for e in table}) == len(table) == 15  # 13 SSAST files, 2 MAE-AST, none for ASiT
    assert upstream.get_family("asit").releases == ()
    for family in upstream.families():
        for entry in family.releases:
            spec = upstream.family_of(entry.name)
            assert spec is None or spec is family, entry.name  # the ablation rows load as ssast_patch_400

