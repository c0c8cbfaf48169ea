"""Who can reach the workbench: logins, the warning for an open server, the upload size limit."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AuthenticationError  # noqa: E402

import workbench.app as workbench_app  # noqa: E402
from core.data import prepare  # noqa: E402
from tests.conftest import VERSE  # noqa: E402
from tests.helpers import free_port  # noqa: E402


def test_logins_come_from_the_flag_and_the_file(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# who may log in\nann:pa:ss\n\nbob:secret\n")
    assert workbench_app.read_auth("me:pw", str(users)) == [("me", "pw"), ("ann", "pa:ss"), ("bob", "secret")]
    assert workbench_app.read_auth(None, None) == []
    with pytest.raises(SystemExit, match="user:password"):
        workbench_app.read_auth("nopassword", None)
    with pytest.raises(SystemExit, match="cannot read --auth-file"):
        workbench_app.read_auth(None, str(tmp_path / "missing.txt"))


@pytest.fixture
def project(tmp_path):
    (tmp_path / "corpus.txt").write_text(VERSE * 20, encoding="utf-8")
    prepare([tmp_path / "corpus.txt"], tmp_path / "dataset")
    return tmp_path


def serve(project, monkeypatch, **kwargs):
    monkeypatch.chdir(project)
    port = free_port()
    demo, jobs, _ = workbench_app.launch(port=port, root=project, dashboard=False, block=False, **kwargs)
    return demo, jobs, f"http://127.0.0.1:{port}/"


def login(url: str, user: str, password: str) -> int:
    data = urllib.parse.urlencode({"username": user, "password": password}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "login", data=data), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_wrong_password_is_refused_and_the_right_one_lets_in(project, monkeypatch):
    demo, jobs, url = serve(project, monkeypatch, host="0.0.0.0", auth=[("ann", "s3cret")])
    try:
        assert login(url, "ann", "wrong") >= 400
        assert login(url, "eve", "s3cret") >= 400
        with pytest.raises(AuthenticationError):  # the API is closed without a login too
            Client(url, verbose=False)
        assert login(url, "ann", "s3cret") == 200
        assert Client(url, auth=("ann", "s3cret"), verbose=False).predict("", api_name="/model_details")
    finally:
        jobs.shutdown()
        demo.close()


def test_an_open_server_without_a_login_is_warned_about(project, monkeypatch, capsys):
    demo, jobs, _ = serve(project, monkeypatch, host="0.0.0.0")
    jobs.shutdown()
    demo.close()
    assert "WARNING: --host 0.0.0.0 without --auth" in capsys.readouterr().err
    demo, jobs, _ = serve(project, monkeypatch)  # 127.0.0.1, the default: no warning
    jobs.shutdown()
    demo.close()
    assert "WARNING" not in capsys.readouterr().err


def test_an_upload_over_the_limit_is_refused_and_the_server_keeps_running(project, monkeypatch, tmp_path_factory):
    monkeypatch.setattr(workbench_app, "UPLOAD_LIMIT_MB", 1)
    big = tmp_path_factory.mktemp("big") / "big.txt"
    big.write_text("to be or not to be\n" * 110_000)  # 2.1 MB
    demo, jobs, url = serve(project, monkeypatch)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="(?i)size|large|limit"):
            client.predict("Upload text files", [handle_file(str(big))], "", 0.1, "strict", api_name="/prepare_start")
        assert not (project / "uploads").exists() or not any((project / "uploads").iterdir())
        info, _ = client.predict("", api_name="/model_details")
        assert info == "No model chosen."
    finally:
        jobs.shutdown()
        demo.close()
