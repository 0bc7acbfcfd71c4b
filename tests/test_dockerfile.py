"""Static checks of the deployment files: Dockerfile, .dockerignore, .streamlit/config.toml,
deploy/ (compose, nginx, k8s) and docs/DEPLOYMENT.md.

No Docker engine is needed: the Dockerfile is parsed here. Where one IS reachable
(`docker info` succeeds), one test builds the image and waits for it to become healthy
(set BNVIZ_SKIP_DOCKER_BUILD=1 to skip that slow test). Where Debian's nginx is installed,
the proxy config is syntax-checked and exercised on loopback against two stub backends.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import string
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS = ROOT / "requirements.txt"
ST_CONFIG = ROOT / ".streamlit" / "config.toml"
DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx.conf"
NGINX_TEST_TEMPLATE = DEPLOY / "nginx.test.conf.template"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCS = ROOT / "docs" / "DEPLOYMENT.md"

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
HEALTH_PATH = "/_stcore/health"
APP_PORT = 8501
EXPECTED_CMD = ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]
# The server limits (bnviz/limits.py) and thread settings the deploy files must pass on.
LIMIT_DEFAULTS = {
    "BNVIZ_MAX_WORKERS": 4,
    "BNVIZ_MAX_STEPS": 200000,
    "BNVIZ_MAX_DEPTH": 20,
    "BNVIZ_MAX_WIDTH": 1024,
    "BNVIZ_MAX_BATCH": 1024,
    "BNVIZ_IDLE_TIMEOUT_S": 600,
}
# Thread settings, and how workers run: the image runs them as processes (docs/DEPLOYMENT.md,
# "The server alone"); bnviz/live.py's default for `streamlit run` is threads.
THREAD_VARS = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "BNVIZ_WORKER_MODE": "process"}


# --------------------------------------------------------------------------- helpers


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # a comment inside a continuation is dropped
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def _of(kind: str) -> list[str]:
    return [args for ins, args in _instructions() if ins == kind]


def _index_of(pred) -> int:
    for i, (ins, args) in enumerate(_instructions()):
        if pred(ins, args):
            return i
    return -1


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _of("ENV"):
        for tok in shlex.split(args):
            key, sep, value = tok.partition("=")
            assert sep, f"use the ENV key=value form, got {tok!r}"
            env[key] = value
    return env


def _args() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for args in _of("ARG"):
        key, sep, value = args.partition("=")
        out[key.strip()] = value.strip().strip('"') if sep else None
    return out


def _pip_installs() -> list[str]:
    """Every `pip install ...` command of every RUN (split on && and ;)."""
    return [part.strip() for run in _of("RUN") for part in re.split(r"&&|;", run) if "pip install" in part]


def _torch_pin_in_dockerfile() -> str:
    pins = [m.group(1) for cmd in _pip_installs() for m in [re.search(r"torch==([\w.+-]+)", cmd)] if m]
    assert len(pins) == 1, f"expected exactly one `torch==X` pip install in the Dockerfile, found {pins}"
    return pins[0]


def _requirements_lines() -> list[str]:
    lines = []
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", text))


def _healthcheck_python(args: str) -> str:
    """The python -c source of an exec-form HEALTHCHECK CMD [...]."""
    m = re.search(r"CMD\s+(\[.*\])\s*$", args)
    assert m, f"HEALTHCHECK should use the exec form CMD [...], got {args!r}"
    argv = json.loads(m.group(1))
    assert argv[:2] == ["python", "-c"], f"HEALTHCHECK should run `python -c` (no curl in slim), got {argv}"
    return argv[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Stub(http.server.BaseHTTPRequestHandler):
    """Stub backend: answers 200 on every path, saying which backend it is."""

    def do_GET(self):  # noqa: N802
        body = json.dumps(
            {
                "backend": self.server.server_port,
                "host": self.headers.get("Host"),
                "upgrade": self.headers.get("Upgrade"),
                "connection": self.headers.get("Connection"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _start_stub(port: int = 0) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Stub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:].strip() if neg else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        patterns.append((re.compile(rx + r"\Z"), neg))
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for rx, neg in patterns:
        if any(rx.match(c) for c in candidates):
            excluded = not neg
    return excluded


# --------------------------------------------------------------------------- Dockerfile


def test_base_image_is_python_311_slim_pinned_by_tag():
    froms = _of("FROM")
    assert len(froms) == 1, f"expected a single-stage build, got FROM lines {froms}"
    image = froms[0].split()[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
        f"base image must be python:3.11.<patch>-slim[-<debian>] pinned by full tag, got {image!r}"
    )


def test_runs_as_a_non_root_user_set_before_cmd():
    ins = _instructions()
    cmd_at = max(i for i, (k, _) in enumerate(ins) if k == "CMD")
    users = [(i, a) for i, (k, a) in enumerate(ins) if k == "USER" and i < cmd_at]
    assert users, "no USER before CMD: the app would run as root"
    user = users[-1][1].split(":")[0]
    assert user not in {"root", "0"}, f"USER before CMD must not be root, got {user!r}"
    assert user.isdigit(), f"use a numeric USER so Kubernetes runAsNonRoot can verify it, got {user!r}"
    # That uid must actually be created in the image.
    assert any(re.search(rf"useradd\b.*--uid {user}\b", a) for a in _of("RUN")), f"no `useradd --uid {user}`"


def test_expose_8501_and_cmd():
    assert any("8501" in a.split() for a in _of("EXPOSE")), "EXPOSE 8501 missing"
    cmds = _of("CMD")
    assert cmds, "no CMD"
    assert json.loads(cmds[-1]) == EXPECTED_CMD


def test_healthcheck_hits_stcore_health_with_python():
    hcs = _of("HEALTHCHECK")
    assert len(hcs) == 1, f"expected one HEALTHCHECK, got {hcs}"
    src = _healthcheck_python(hcs[0])
    assert f"http://127.0.0.1:{APP_PORT}{HEALTH_PATH}" in src
    assert "curl" not in hcs[0] and "wget" not in hcs[0]


def test_healthcheck_command_really_works():
    """Run the HEALTHCHECK's python against a stub (port swapped): 0 when up, non-zero when down."""
    port = _free_port()
    src = _healthcheck_python(_of("HEALTHCHECK")[0]).replace(f":{APP_PORT}/", f":{port}/")
    srv = _start_stub(port)
    try:
        up = subprocess.run([sys.executable, "-c", src], capture_output=True, timeout=30)
    finally:
        srv.shutdown()
        srv.server_close()
    assert up.returncode == 0, up.stderr.decode()
    down = subprocess.run([sys.executable, "-c", src], capture_output=True, timeout=30)
    assert down.returncode != 0


def test_torch_comes_from_the_cpu_index_before_the_requirements():
    args = _args()
    assert args.get("TORCH_INDEX") == CPU_INDEX, f"ARG TORCH_INDEX should default to {CPU_INDEX}"
    installs = _pip_installs()
    for cmd in installs:
        assert "--no-cache-dir" in cmd, f"pip install without --no-cache-dir: {cmd}"
    torch_cmd = [c for c in installs if "torch==" in c]
    assert len(torch_cmd) == 1, torch_cmd
    assert re.search(r"--index-url[ =]\"?\$\{?TORCH_INDEX\}?\"?", torch_cmd[0]), (
        f"torch must be installed with --index-url $TORCH_INDEX: {torch_cmd[0]}"
    )
    assert "--extra-index-url" not in torch_cmd[0], "an extra index could let pip pick a CUDA wheel"
    torch_at = _index_of(lambda k, a: k == "RUN" and "torch==" in a)
    req_at = _index_of(lambda k, a: k == "RUN" and re.search(r"pip install[^&;]*-r\s+requirements\.txt", a))
    assert req_at != -1, "requirements.txt is never installed"
    assert torch_at < req_at, "torch must be installed BEFORE requirements.txt (else pip pulls CUDA torch)"


def test_torch_pin_matches_requirements():
    pin = _torch_pin_in_dockerfile()
    if not REQUIREMENTS.exists():
        pytest.skip("requirements.txt does not exist yet (the lead writes it): cannot compare the torch pin")
    torch_lines = [l for l in _requirements_lines() if re.match(r"torch\b(?![-_\w])", l, re.I)]
    assert len(torch_lines) == 1, f"requirements.txt should pin torch exactly once, found {torch_lines}"
    m = re.fullmatch(r"torch\s*==\s*([\w.]+)\s*(;.*)?", torch_lines[0], re.I)
    assert m, f"requirements.txt should pin torch with ==, got {torch_lines[0]!r}"
    assert m.group(1) == pin, f"Dockerfile installs torch=={pin} but requirements.txt pins {torch_lines[0]!r}"


def test_no_torchvision():
    assert "torchvision" not in DOCKERFILE.read_text(encoding="utf-8").lower()
    if REQUIREMENTS.exists():
        assert not any("torchvision" in l.lower() for l in _requirements_lines())


def test_datasets_prefetched_into_a_data_dir_owned_by_the_app_user():
    env = _env()
    data_dir = env.get("BNVIZ_DATA_DIR")
    assert data_dir and data_dir.startswith("/"), f"ENV BNVIZ_DATA_DIR must be an absolute path, got {data_dir!r}"
    fetch_at = _index_of(
        lambda k, a: k == "RUN" and re.search(r"python -m bnviz\.data fetch\b.*\bmnist\b", a) and "fashion-mnist" in a
    )
    assert fetch_at != -1, "no `RUN python -m bnviz.data fetch mnist fashion-mnist`"
    fetch_cmd = _instructions()[fetch_at][1]
    assert "|| true" not in fetch_cmd and "; true" not in fetch_cmd, "a failed download must fail the build"
    ins = _instructions()
    users_before = [a for k, a in ins[:fetch_at] if k == "USER"]
    assert users_before and users_before[-1].split(":")[0] not in {"root", "0"}, (
        "fetch the data as the app user, so it owns BNVIZ_DATA_DIR"
    )
    assert any(re.search(rf"chown\b.*\s{re.escape(data_dir)}\b", a) for k, a in ins[:fetch_at] if k == "RUN"), (
        f"{data_dir} must be created and chown'ed to the app user before the fetch"
    )
    copy_pkg_at = _index_of(lambda k, a: k == "COPY" and a.split()[0].rstrip("/") == "bnviz")
    assert -1 < copy_pkg_at < fetch_at, "COPY bnviz/ must come before the fetch"


def test_server_limits_and_thread_env_defaults():
    env = _env()
    for var, default in {**LIMIT_DEFAULTS, **THREAD_VARS}.items():
        assert env.get(var) == str(default), f"ENV {var} should be {default}, got {env.get(var)!r}"


def test_image_caps_malloc_arenas_as_the_app_does():
    from bnviz import malloc_arenas

    assert _env().get(malloc_arenas.ENV) == str(malloc_arenas.ARENAS)


def test_limit_defaults_match_bnviz_limits():
    try:
        from bnviz import limits
    except ImportError as exc:
        pytest.skip(f"bnviz.limits not importable ({exc}): cannot cross-check the defaults")
    table = getattr(limits, "LIMIT_VARS", None)
    if not isinstance(table, dict):
        pytest.skip("bnviz.limits has no LIMIT_VARS table: cannot cross-check the defaults")
    assert {k: v[0] for k, v in table.items()} == LIMIT_DEFAULTS


def test_copies_only_what_the_app_needs():
    sources = []
    for args in _of("COPY"):
        toks = [t for t in args.split() if not t.startswith("--")]
        sources += toks[:-1]
    names = {s.removeprefix("./").rstrip("/") for s in sources}
    assert "." not in names and "" not in names, "COPY . copies the whole repo (tests, docs, .git...)"
    assert names <= {"requirements.txt", "app.py", "ui", "bnviz", "pages", ".streamlit"}, names
    assert {"requirements.txt", "app.py", "ui", "bnviz", ".streamlit"} <= names, names


def test_dockerignore_keeps_the_context_small_but_complete():
    assert DOCKERIGNORE.exists()
    for rel in [".git/HEAD", "tests/test_norms.py", "docs/DEPLOYMENT.md", "docs/img/x.png", "out/run.json",
                "artifacts/a.bin", ".venv/bin/python", ".whl/x.whl", "bnviz/__pycache__/data.cpython-311.pyc",
                "deploy/nginx.conf", "tools/make_mnist_mini.py", ".pytest_cache/v", "Dockerfile"]:
        assert _dockerignore_excludes(rel), f".dockerignore should exclude {rel}"
    for rel in ["requirements.txt", "app.py", "bnviz/__init__.py", "bnviz/data.py", "bnviz/datasets/mnist_mini.npz",
                "pages/1_Page.py", "ui/lab.py", ".streamlit/config.toml"]:
        assert not _dockerignore_excludes(rel), f".dockerignore must let {rel} into the build context"


def test_copy_sources_exist():
    if not (ROOT / "app.py").exists():
        pytest.skip("app.py does not exist yet: the image cannot be assembled before it is written")
    for args in _of("COPY"):
        toks = [t for t in args.split() if not t.startswith("--")]
        for src in toks[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile COPYs {src}, which is not in the repo"


# --------------------------------------------------------------------------- Streamlit config


def test_streamlit_config_production_values():
    cfg = tomllib.loads(ST_CONFIG.read_text(encoding="utf-8"))
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["enableCORS"] is True
    assert cfg["server"]["fileWatcherType"] == "none"
    assert cfg["server"]["headless"] is True
    assert cfg["server"]["runOnSave"] is False
    assert cfg["server"]["maxUploadSize"] == 1
    assert cfg["client"]["toolbarMode"] == "minimal"
    assert cfg["client"]["showErrorDetails"] == "none"


def test_streamlit_config_options_all_exist():
    from streamlit import config

    config.get_config_options()  # parses once (a no-op when already parsed)
    known = config._config_options  # noqa: SLF001 -- the registry of every option
    assert known, "streamlit registered no config options?"
    cfg = tomllib.loads(ST_CONFIG.read_text(encoding="utf-8"))
    for section, options in cfg.items():
        assert isinstance(options, dict), f"[{section}] should be a table"
        for name, value in options.items():
            key = f"{section}.{name}"
            assert key in known, f"{key} is not a Streamlit {config.__name__} option"
            opt = known[key]
            assert not opt.deprecated, f"{key} is deprecated in this Streamlit"
            if opt.type in (bool, int, str):
                assert type(value) is opt.type, f"{key} should be a {opt.type.__name__}, got {value!r}"


# --------------------------------------------------------------------------- nginx


def _nginx_text() -> str:
    return NGINX_CONF.read_text(encoding="utf-8")


def _directives(text: str) -> str:
    return "\n".join(l.split("#", 1)[0] for l in text.splitlines())


def test_nginx_conf_websocket_sticky_and_timeouts():
    conf = _directives(_nginx_text())
    assert re.search(r"proxy_http_version\s+1\.1\s*;", conf)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;", conf)
    assert re.search(r"proxy_set_header\s+Connection\s+(\$connection_upgrade|\"?upgrade\"?)\s*;", conf)
    assert re.search(r"proxy_set_header\s+Host\s+\$http_host\s*;", conf), "forward Host with its port"
    assert re.search(r"^\s*(ip_hash|hash\s+\$\w+\s+consistent)\s*;", conf, re.M), "no sticky directive"
    m = re.search(r"proxy_read_timeout\s+(\d+)([smhd]?)\s*;", conf)
    assert m, "no proxy_read_timeout (nginx's 60 s default drops idle websockets)"
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    assert seconds >= 600


def test_nginx_templates_share_one_source_of_truth():
    assert _placeholders(_nginx_text()) == {"UPSTREAM_SERVERS", "LISTEN_PORT"}
    wrapper = NGINX_TEST_TEMPLATE.read_text(encoding="utf-8")
    assert _placeholders(wrapper) == {"PREFIX"}
    assert re.search(r"include\s+\$\{PREFIX\}/bnviz\.conf\s*;", wrapper)
    # Nothing in the wrapper duplicates the proxy logic.
    assert "proxy_pass" not in _directives(wrapper) and "upstream" not in _directives(wrapper)


def _render_nginx(prefix: Path, backends: list[int], listen: int) -> Path:
    servers = " ".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in backends)
    (prefix / "bnviz.conf").write_text(
        string.Template(_nginx_text()).safe_substitute(UPSTREAM_SERVERS=servers, LISTEN_PORT=str(listen))
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        string.Template(NGINX_TEST_TEMPLATE.read_text(encoding="utf-8")).safe_substitute(PREFIX=str(prefix))
    )
    assert "${" not in conf.read_text(encoding="utf-8") + (prefix / "bnviz.conf").read_text(encoding="utf-8")
    return conf


def _nginx_argv(conf: Path) -> list[str]:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not nginx:
        pytest.skip("nginx is not installed here (apt-get install nginx) to check the config for real")
    p = conf.parent
    return [nginx, "-c", str(conf), "-p", str(p), "-e", str(p / "error.log")]


def test_nginx_config_syntax(tmp_path):
    conf = _render_nginx(tmp_path, [_free_port(), _free_port()], _free_port())
    res = subprocess.run([*_nginx_argv(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_nginx_proxy_is_sticky_per_browser(tmp_path):
    stubs = [_start_stub(), _start_stub()]
    listen = _free_port()
    conf = _render_nginx(tmp_path, [s.server_port for s in stubs], listen)
    proc = subprocess.Popen([*_nginx_argv(conf), "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)

    def get(path="/", headers=None):
        c = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, r.getheader("Set-Cookie"), body

    try:
        for _ in range(100):
            try:
                if get("/nginx-health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"nginx did not come up: {proc.stderr.read() if proc.poll() is not None else ''}")
        seen = set()
        for _ in range(24):  # 24 "browsers"
            status, set_cookie, body = get()
            assert status == 200 and set_cookie and set_cookie.startswith("bnviz_route=")
            cookie = set_cookie.split(";", 1)[0]
            first = json.loads(body)["backend"]
            seen.add(first)
            for _ in range(3):  # its later requests, incl. the websocket upgrade
                status, again, body = get(
                    headers={"Cookie": cookie, "Upgrade": "websocket", "Connection": "Upgrade",
                             "Host": "class.example.org:8080"}
                )
                info = json.loads(body)
                assert info["backend"] == first, "a browser moved to another replica"
                assert again.split(";", 1)[0] == cookie
                assert info["host"] == "class.example.org:8080"
                assert info["upgrade"] == "websocket" and info["connection"].lower() == "upgrade"
        assert seen == {s.server_port for s in stubs}, "new browsers should spread over the replicas"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for s in stubs:
            s.shutdown()
            s.server_close()


# --------------------------------------------------------------------------- compose


def _yaml():
    try:
        import yaml
    except ImportError:
        pytest.skip("PyYAML is not installed (pip install pyyaml) to parse the deploy YAML")
    return yaml


def test_compose_file():
    yaml = _yaml()
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    app, nginx = doc["services"]["app"], doc["services"]["nginx"]
    assert (COMPOSE.parent / app["build"]["context"] / app["build"].get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert "ports" not in app, "replicas must not publish ports: only nginx is reachable"
    assert "replicas" in app["deploy"]
    for var, default in {**LIMIT_DEFAULTS, **THREAD_VARS}.items():
        assert re.fullmatch(rf"\$\{{{var}:-{default}\}}", str(app["environment"][var])), (var, app["environment"][var])
    assert HEALTH_PATH in " ".join(app["healthcheck"]["test"])
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+(-alpine)?", nginx["image"]), "pin the nginx image tag"
    src, dst = nginx["volumes"][0].split(":")[:2]
    assert (COMPOSE.parent / src).resolve() == NGINX_CONF and dst.startswith("/etc/nginx/templates/")
    assert set(nginx["environment"]) >= _placeholders(_nginx_text()), "compose must set every nginx placeholder"
    assert "app:8501" in nginx["environment"]["UPSTREAM_SERVERS"]


# --------------------------------------------------------------------------- kubernetes


def test_k8s_probes_text_level():
    """Without PyYAML too: the probes name the health path and port."""
    text = (K8S / "deployment.yaml").read_text(encoding="utf-8")
    for probe in ("readinessProbe", "livenessProbe"):
        block = text.split(f"{probe}:", 1)[1][:300]
        assert f"path: {HEALTH_PATH}" in block and f"port: {APP_PORT}" in block, probe


def test_k8s_manifests():
    yaml = _yaml()
    docs = {}
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text(encoding="utf-8")):
            assert d.get("apiVersion") and d.get("kind") and d["metadata"]["name"], f
            docs[d["kind"]] = d
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Ingress"} <= set(docs)

    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert any(p["containerPort"] == APP_PORT for p in c["ports"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == HEALTH_PATH and c[probe]["httpGet"]["port"] == APP_PORT, probe
    res = c["resources"]
    assert res["requests"] == {"cpu": "1", "memory": "1Gi"} and res["limits"] == {"cpu": "2", "memory": "3Gi"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {k: str(v) for k, v in {**LIMIT_DEFAULTS, **THREAD_VARS}.items()}

    svc = docs["Service"]["spec"]
    assert svc["sessionAffinity"] == "ClientIP"
    assert svc["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert any(p["targetPort"] in (APP_PORT, "http") for p in svc["ports"])

    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 70

    ann = docs["Ingress"]["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    backend = docs["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == docs["Service"]["metadata"]["name"]


# --------------------------------------------------------------------------- docs


def test_deployment_doc_lists_every_variable_with_its_default():
    text = DOCS.read_text(encoding="utf-8")
    for var, default in {**LIMIT_DEFAULTS, **THREAD_VARS, "BNVIZ_DATA_DIR": _env()["BNVIZ_DATA_DIR"]}.items():
        assert re.search(rf"\|\s*`{var}`\s*\|\s*`?{re.escape(str(default))}`?\s*\|", text), f"{var} row missing"
    assert "Capacity (load test)" in text
    assert "TORCH_INDEX" in text and "--gpus all" in text


# --------------------------------------------------------------------------- real build


def _docker_engine_reason() -> str | None:
    if not shutil.which("docker"):
        return "no docker CLI"
    try:
        res = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or ["`docker info` failed"])[-1]
    return None


@pytest.mark.slow
def test_image_builds_and_becomes_healthy():
    if os.environ.get("BNVIZ_SKIP_DOCKER_BUILD"):
        pytest.skip("BNVIZ_SKIP_DOCKER_BUILD is set")
    reason = _docker_engine_reason()
    if reason:
        pytest.skip(f"no Docker engine on this machine: {reason}")
    tag = f"bnviz-test:{uuid.uuid4().hex[:8]}"
    name = f"bnviz-test-{uuid.uuid4().hex[:8]}"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stderr[-4000:]
    try:
        run = subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1::{APP_PORT}", tag],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        port = subprocess.run(["docker", "port", name, str(APP_PORT)], capture_output=True, text=True,
                              timeout=30).stdout.split(":")[-1].strip()
        deadline = time.monotonic() + 180
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
            if state in ("healthy", "unhealthy"):
                break
            time.sleep(3)
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
        assert state == "healthy", f"container is {state!r}: {logs.stdout[-2000:]}{logs.stderr[-2000:]}"
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
        c.request("GET", HEALTH_PATH)
        assert c.getresponse().status == 200

        def in_box(*argv):
            return subprocess.run(["docker", "exec", name, *argv], capture_output=True, text=True,
                                  timeout=60).stdout.strip()

        assert in_box("id", "-u") != "0"
        assert in_box("python", "-c", "import torch; print(torch.version.cuda)") == "None"
        data_dir = _env()["BNVIZ_DATA_DIR"]
        listing = in_box("python", "-c", f"import os; print(sorted(os.listdir({data_dir!r})))")
        assert "mnist" in listing and "fashion-mnist" in listing, listing
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
