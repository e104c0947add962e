"""The paper's released data: a local copy by argument or environment variable, else a download of exactly the manifest's files,
each checked against its SHA-256 — tested against a web server on this machine serving the local copy."""
import functools, hashlib, http.server, json, os, threading
from pathlib import Path

import pytest

from dataeff.core import DataeffError
from dataeff.paper import PAPER_DATA_ENV, PAPER_RELEASE, paper_coslow, paper_curves, paper_curves_by_family, paper_data


@pytest.fixture
def server(reference):
    "A web server on 127.0.0.1 serving the local copy of the release; yields its URL template and the list of paths asked for."
    asked = []
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
        def do_GET(self):
            asked.append(self.path)
            super().do_GET()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(reference)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try: yield f"http://127.0.0.1:{httpd.server_address[1]}/{{path}}", asked
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    "No local copy configured and a fresh dataeff cache: paper_data() has to download."
    monkeypatch.delenv(PAPER_DATA_ENV, raising=False)
    monkeypatch.setenv("DATAEFF_CACHE", str(tmp_path/"cache"))
    return tmp_path/"cache"/"paper"/PAPER_RELEASE["commit"]


def test_the_manifest_matches_the_local_copy(reference):
    files = {str(p.relative_to(reference)) for p in reference.rglob("*") if p.is_file()}
    assert files == set(PAPER_RELEASE["files"])
    for path, expected in PAPER_RELEASE["files"].items():
        assert hashlib.sha256((reference/path).read_bytes()).hexdigest() == expected["sha256"], path


def test_a_local_copy_by_argument_or_environment(reference, monkeypatch):
    monkeypatch.delenv(PAPER_DATA_ENV, raising=False)
    assert paper_data(reference) == reference
    monkeypatch.setenv(PAPER_DATA_ENV, str(reference))
    assert paper_data() == reference
    with pytest.raises(DataeffError, match="file\\(s\\) of the release missing"): paper_data(reference/"results")


def test_download_fetches_exactly_the_manifest_then_reads_from_the_cache(server, empty_cache):
    url, asked = server
    folder = paper_data(url=url, progress=False)
    assert folder == empty_cache
    assert sorted(asked) == sorted(f"/{p}" for p in PAPER_RELEASE["files"])  # every file once, nothing else
    for path, expected in PAPER_RELEASE["files"].items():
        assert hashlib.sha256((folder/path).read_bytes()).hexdigest() == expected["sha256"]
    assert not [p for p in folder.rglob("*.tmp")]
    asked.clear()
    assert paper_data(url=url, progress=False) == folder and asked == []  # the cache is complete: nothing downloaded again
    assert len(paper_curves("mistral")) == 30 and len(paper_coslow()["coslow"]) == 24


def test_download_resumes_and_refuses_an_altered_file(server, empty_cache, tmp_path):
    url, asked = server
    paper_data(url=url, progress=False)
    damaged = empty_cache/"results"/"human_eval.json"
    damaged.write_text("{}")
    (empty_cache/"results"/"auc_res"/"qwen_auc_logscale_by_task_5000.json").unlink()
    asked.clear()
    paper_data(url=url, progress=False)
    assert sorted(asked) == ["/results/auc_res/qwen_auc_logscale_by_task_5000.json", "/results/human_eval.json"]  # only what is missing or wrong
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == PAPER_RELEASE["files"]["results/human_eval.json"]["sha256"]
    # a server that serves another file under a manifest path: refused, nothing kept
    altered = tmp_path/"altered"
    for path in PAPER_RELEASE["files"]:
        (altered/path).parent.mkdir(parents=True, exist_ok=True)
        (altered/path).write_bytes(b"not the release")
    damaged.unlink()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(altered)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DataeffError, match="SHA-256 mismatch"):
            paper_data(url=f"http://127.0.0.1:{httpd.server_address[1]}/{{path}}", progress=False)
    finally: httpd.shutdown()
    assert not damaged.exists()


def test_an_unreachable_server_is_one_line_naming_the_fix(empty_cache):
    with pytest.raises(DataeffError, match="cannot download it .*DATAEFF_PAPER_DATA"):
        paper_data(url="http://127.0.0.1:9/{path}", progress=False)


def test_savings_on_the_paper_curves_by_name(reference, monkeypatch, tmp_path, capsys):
    from dataeff.cli import main
    monkeypatch.setenv(PAPER_DATA_ENV, str(reference))
    assert main(["savings", "--paper", "qwen", "--target", "0.9", "--json", str(tmp_path/"s.json")]) == 0
    assert "totals over tasks" in capsys.readouterr().out
    report = json.loads((tmp_path/"s.json").read_text())
    simulated = {r["task"] for r in report["rows"]} | set(report["unreached"]["0.9"])
    assert simulated == set(paper_curves_by_family()["qwen"]) and len(simulated) == 30  # every Qwen task of the release, and only those
