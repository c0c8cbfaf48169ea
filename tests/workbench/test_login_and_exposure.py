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
    kwargs.setdefault("dashboard", False)
    demo, jobs, _ = workbench_app.launch(port=port, root=project, block=False, **kwargs)
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


def request(url: str, method: str = "GET", opener=None, headers: dict | None = None, data: bytes | None = None):
    """(status, body) of a request; errors are answers too."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def test_the_dashboard_is_behind_the_login_and_read_only(project, monkeypatch):
    import http.cookiejar

    import optuna

    storage = f"sqlite:///{project}/studies/gpt_tuning.db"
    (project / "studies").mkdir()
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    running = study.ask()
    demo, jobs, url = serve(project, monkeypatch, auth=[("ann", "s3cret")], dashboard=True)
    try:
        assert request(url + "dashboard/")[0] == 401
        assert request(url + "api/studies", headers={"Cookie": "access-token-unsecure-x=forged"})[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        form = urllib.parse.urlencode({"username": "ann", "password": "wrong"}).encode()
        assert request(url + "login", "POST", opener, data=form)[0] >= 400
        assert request(url + "api/studies", opener=opener)[0] == 401
        form = urllib.parse.urlencode({"username": "ann", "password": "s3cret"}).encode()
        assert request(url + "login", "POST", opener, data=form)[0] == 200
        status, page = request(url + "dashboard/", opener=opener, headers={"Accept-Encoding": "gzip"})
        assert status == 200 and "bundle.js" in page
        status, body = request(url + "api/studies", opener=opener, headers={"Accept-Encoding": "gzip"})
        assert status == 200 and '"s"' in body
        assert request(url + "api/studies/1", "DELETE", opener)[0] == 403
        tell = b'{"state": "Complete", "values": [-100]}'
        status, body = request(url + f"api/trials/{running._trial_id}/tell", "POST", opener, data=tell,
                               headers={"Content-Type": "application/json"})  # fmt: skip
        assert status == 403 and "read-only" in body
        assert request(url + "api/studies", "POST", opener, data=b'{"study_name": "x"}')[0] == 403
        again = optuna.load_study(study_name="s", storage=storage)
        assert again.trials[-1].state == optuna.trial.TrialState.RUNNING and again.best_value >= 0
        assert request(url, opener=opener)[0] == 200  # the workbench itself still answers
    finally:
        jobs.shutdown()
        demo.close()


def test_the_local_dashboard_refuses_other_hosts(project):
    from workbench.dashboard import Dashboard

    board = Dashboard(f"sqlite:///{project}/local.db")
    try:
        port = board.server.server_port
        url = f"http://127.0.0.1:{port}/api/studies"
        assert request(url, headers={"Accept-Encoding": "gzip"})[0] == 200
        assert request(url, headers={"Host": "evil.example"})[0] == 403
        assert request(url, headers={"Host": f"evil.example:{port}"})[0] == 403
        assert request(url, headers={"Host": f"localhost:{port}", "Accept-Encoding": "gzip"})[0] == 200
    finally:
        board.close()


def test_repeated_wrong_passwords_are_slowed_per_client_and_the_owner_still_gets_in(project, monkeypatch):
    import time

    demo, jobs, url = serve(project, monkeypatch, auth=[("ann", "s3cret")])
    try:

        def attempt(password: str, client: str) -> tuple[int, float]:
            form = urllib.parse.urlencode({"username": "ann", "password": password}).encode()
            started = time.monotonic()
            status, _ = request(url + "login", "POST", data=form, headers={"X-Forwarded-For": client})
            return status, time.monotonic() - started

        fast = [attempt("wrong", "10.0.0.1")[1] for _ in range(3)]
        slowed = [attempt("wrong", "10.0.0.1")[1] for _ in range(2)]
        assert max(fast) < 0.4 and slowed[0] >= 0.45 and slowed[1] >= 0.95  # 0.5 s, then 1 s
        status, seconds = attempt("s3cret", "10.0.0.2")  # another client is not slowed
        assert status == 200 and seconds < 0.4
        status, seconds = attempt("s3cret", "10.0.0.1")  # the right password still works, after its delay
        assert status == 200 and seconds >= 1.5
        assert attempt("wrong", "10.0.0.1")[1] < 0.4  # and it cleared the count
    finally:
        jobs.shutdown()
        demo.close()
