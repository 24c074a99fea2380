//! The network agent with real network separation: each test puts a gateway in a
//! network namespace of its own, where the host's loopback (PostgreSQL, MariaDB and
//! sshd listen there) is out of reach, and runs `warden agent` processes on the host
//! that dial out to it over TLS (the gateway's CA pinned). psql, mysql, ssh and scp
//! reach the targets only through an agent; kill -9, failover, revocation, the
//! allowlist and a gateway restart are tried on the real processes.
//!
//! Namespaces need root. Without them the tests say so loudly and pass, unless
//! `WARDEN_TEST_REQUIRE_NETNS` is set (the test script sets it when run as root), so
//! CI cannot skip them silently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

mod common;
use common::*;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const ADMIN: &str = "agent-test-admin-token-0123456789";
const PG_PASSWORD: &str = "scram-pw-1";

/// A network namespace with a veth link to the host: the host is `.1`, the
/// namespace `.2` of a /30 of its own.
struct Netns {
    name: String,
    host_ip: String,
    ns_ip: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            text(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// A new namespace, or `None` (after saying why, loudly) when this machine cannot
    /// make one and the run does not require it.
    fn create() -> Option<Netns> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let slot = (pid % 40) * 6 + n;
        let name = format!("wdn-gw-{pid}-{n}");
        let (host_if, ns_if) = (
            format!("wdh{}x{n}", pid % 100_000),
            format!("wdg{}x{n}", pid % 100_000),
        );
        let ns = Netns {
            name: name.clone(),
            host_ip: format!("10.213.{}.1", slot % 250),
            ns_ip: format!("10.213.{}.2", slot % 250),
        };
        let made = (|| {
            let _ = ip(&["link", "del", &host_if]);
            ip(&["netns", "add", &name])?;
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &host_if,
            ])?;
            ip(&["link", "set", &host_if, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns_if])?;
            inside(&["link", "set", &ns_if, "up"])?;
            inside(&["link", "set", "lo", "up"])
        })();
        match made {
            Ok(()) => Some(ns),
            Err(e) => {
                drop(ns);
                if std::env::var_os("WARDEN_TEST_REQUIRE_NETNS").is_some() {
                    panic!("network namespaces are required here but failed: {e}");
                }
                eprintln!(
                    "\n!!! SKIPPED: the network agent tests need network namespaces (root and \
                     iproute2): {e}\n"
                );
                None
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the link, and with it the host's.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A CA and a server certificate for `ip`, made with openssl; returns the CA's path.
fn certificates(dir: &Path, ip: &str) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = run(Command::new("openssl").current_dir(dir).args(args));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=warden agent test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "gw.key",
                "-out",
                "gw.csr",
                "-subj",
                "/CN=gateway",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("gw.ext"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "gw.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "gw.pem",
        "-days",
        "2",
        "-extfile",
        "gw.ext",
    ]);
    dir.join("ca.pem")
}

/// A gateway inside the namespace, its API on TLS, and what the tests need of it.
struct Site {
    netns: Netns,
    dir: tempfile::TempDir,
    ca: PathBuf,
    gateway: Option<Running>,
    /// The listeners of the first start, so a restart keeps them.
    listen: Vec<(&'static str, String)>,
    agents: Vec<Child>,
}

impl Site {
    fn start() -> Option<Site> {
        let netns = Netns::create()?;
        let dir = tempfile::tempdir().unwrap();
        let ca = certificates(dir.path(), &netns.ns_ip);
        let any = format!("{}:0", netns.ns_ip);
        let listen = vec![
            ("WARDEN_API__LISTEN", any.clone()),
            ("WARDEN_PG__LISTEN", any.clone()),
            ("WARDEN_MYSQL__LISTEN", any.clone()),
            ("WARDEN_SSH__LISTEN", any.clone()),
            ("WARDEN_KUBERNETES__LISTEN", any.clone()),
            ("WARDEN_HTTP__LISTEN", any.clone()),
        ];
        let mut site = Site {
            netns,
            dir,
            ca,
            gateway: None,
            listen,
            agents: Vec::new(),
        };
        site.start_gateway();
        let gw = site.gateway.as_ref().unwrap();
        // Restarts listen where this start did.
        site.listen = vec![
            (
                "WARDEN_API__LISTEN",
                gw.url.rsplit_once("//").unwrap().1.to_string(),
            ),
            ("WARDEN_PG__LISTEN", gw.listener("PostgreSQL")),
            ("WARDEN_MYSQL__LISTEN", gw.listener("MySQL")),
            ("WARDEN_SSH__LISTEN", gw.listener("SSH")),
            ("WARDEN_KUBERNETES__LISTEN", gw.listener("Kubernetes")),
            ("WARDEN_HTTP__LISTEN", gw.listener("HTTP")),
        ];
        Some(site)
    }

    fn start_gateway(&mut self) {
        let bin = env!("CARGO_BIN_EXE_warden");
        let mut cmd = Command::new("ip");
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["netns", "exec", &self.netns.name, bin, "gateway"]);
        let cert = self.dir.path().join("gw.pem");
        let key = self.dir.path().join("gw.key");
        let mut envs: Vec<(&str, &str)> = vec![
            ("WARDEN_ADMIN_TOKEN", ADMIN),
            // Its stderr is read only at the end: debug logs of 100 MiB would fill the pipe.
            ("WARDEN_LOG", "info"),
            ("WARDEN_API__TLS_CERT", cert.to_str().unwrap()),
            ("WARDEN_API__TLS_KEY", key.to_str().unwrap()),
            // Tokens cross a network here: the clients' listeners are on TLS too.
            ("WARDEN_PG__TLS_CERT", cert.to_str().unwrap()),
            ("WARDEN_PG__TLS_KEY", key.to_str().unwrap()),
            ("WARDEN_MYSQL__TLS_CERT", cert.to_str().unwrap()),
            ("WARDEN_MYSQL__TLS_KEY", key.to_str().unwrap()),
            ("WARDEN_KUBERNETES__TLS_CERT", cert.to_str().unwrap()),
            ("WARDEN_KUBERNETES__TLS_KEY", key.to_str().unwrap()),
            ("WARDEN_HTTP__TLS_CERT", cert.to_str().unwrap()),
            ("WARDEN_HTTP__TLS_KEY", key.to_str().unwrap()),
            ("WARDEN_AGENTS__DIAL_WAIT_SECS", "2"),
            ("WARDEN_BACKENDS__CONNECT_TIMEOUT_SECS", "3"),
        ];
        envs.extend(self.listen.iter().map(|(k, v)| (*k, v.as_str())));
        self.gateway = Some(spawn_gateway(&mut cmd, self.dir.path(), &envs));
    }

    fn url(&self) -> String {
        self.gateway.as_ref().unwrap().url.clone()
    }

    fn port(&self, protocol: &str) -> String {
        self.gateway.as_ref().unwrap().port(protocol)
    }

    /// Calls the API (trusting the test CA) with `token`.
    fn api_as(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--cacert", self.ca.to_str().unwrap(), "-X", method])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = run(cmd.arg(format!("{}{path}", self.url())));
        let out = text(&out.stdout);
        let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        (
            status.parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, answer) = self.api_as(ADMIN, method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// Registers agent `name`; its key.
    fn add_agent(&self, name: &str) -> String {
        self.api("POST", "/api/agents", Some(&json!({"name": name})))["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Starts a `warden agent` on the host; its index in `agents`.
    fn run_agent(&mut self, key: &str, allow: &str) -> usize {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("agent-{}.log", self.agents.len())),
        )
        .unwrap();
        let child = warden(self.dir.path())
            .args([
                "agent",
                "--gateway",
                &self.url(),
                "--ca",
                self.ca.to_str().unwrap(),
            ])
            .args(["--allow", allow])
            .env("WARDEN_AGENT_KEY", key)
            .env("WARDEN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.push(child);
        self.agents.len() - 1
    }

    fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log"))).unwrap_or_default()
    }

    /// The agent's processes connected now, as the API lists them.
    fn processes(&self, agent: &str) -> Vec<Value> {
        self.api("GET", &format!("/api/agents/{agent}"), None)["processes"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits (bounded) until `agent` has `n` processes connected.
    fn wait_processes(&self, agent: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.processes(agent).len() != n {
            assert!(
                Instant::now() < deadline,
                "agent {agent} never had {n} processes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) for a `kind` event whose payload's `code` is `code`.
    fn wait_event(&self, kind: &str, code: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .events(kind)
            .iter()
            .any(|e| e["event"]["payload"]["code"] == code)
        {
            assert!(
                Instant::now() < deadline,
                "no {kind} event with code {code}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.api("GET", &format!("/api/audit?kind={kind}&limit=1000"), None)["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn user_token(&self) -> String {
        self.api(
            "POST",
            "/api/api-keys",
            Some(&json!({"name": "ops", "subject": "dana", "groups": ["ops"]})),
        )["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn add_pg(&self, name: &str, target: &str, agent: Option<&str>) {
        self.api(
            "POST",
            "/api/connections",
            Some(&json!({"name": name, "kind": "postgres", "target": target,
                         "username": "warden_t_scram", "secret": PG_PASSWORD,
                         "allowed_groups": ["ops"], "agent": agent, "tls": {"mode": "disable"}})),
        );
    }

    fn psql(&self, dbname: &str, token: &str, sql: &str) -> std::process::Output {
        run(Command::new("psql")
            .arg(format!(
                "host={} port={} dbname={dbname} user=dana sslmode=verify-ca sslrootcert={} \
                 connect_timeout=20",
                self.netns.ns_ip,
                self.port("PostgreSQL"),
                self.ca.display()
            ))
            .args(["-X", "-At", "-c", sql])
            .env("PGPASSWORD", token))
    }

    fn psql_session(&self, dbname: &str, token: &str) -> Interactive {
        Interactive::spawn(
            Command::new("psql")
                .arg(format!(
                    "host={} port={} dbname={dbname} user=dana sslmode=verify-ca sslrootcert={}",
                    self.netns.ns_ip,
                    self.port("PostgreSQL"),
                    self.ca.display()
                ))
                .args(["-X", "-At"])
                .env("PGPASSWORD", token),
        )
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        if let Some(mut gw) = self.gateway.take() {
            let _ = gw.child.kill();
            let _ = gw.child.wait();
        }
    }
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn ssh_client(program: &str, token: &str) -> Command {
    let mut cmd = Command::new("sshpass");
    cmd.args([
        "-e",
        program,
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
    ])
    .args([
        "-o",
        "LogLevel=ERROR",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "BatchMode=no",
    ])
    .env("SSHPASS", token)
    .stdin(Stdio::null());
    cmd
}

fn mysql(site: &Site, dbname: &str, token: &str, sql: &str) -> std::process::Output {
    run(Command::new("mysql")
        .args([
            "-h",
            &site.netns.ns_ip,
            "-P",
            &site.port("MySQL"),
            "--protocol=TCP",
            "-u",
            "dana",
        ])
        .args(["-N", "-B", "-e", sql, dbname])
        .env("MYSQL_PWD", token))
}

#[test]
fn psql_mysql_ssh_and_scp_reach_private_targets_only_through_the_agent() {
    let Some(mut site) = Site::start() else {
        return;
    };
    let key = site.add_agent("dc-east");
    let pg = std::env::var("WARDEN_TEST_PG_URL")
        .ok()
        .and_then(|u| {
            u.split('@')
                .nth(1)
                .map(|h| h.split('/').next().unwrap().to_string())
        })
        .unwrap_or_else(|| "127.0.0.1:5432".into());
    let mariadb =
        std::env::var("WARDEN_TEST_MYSQL_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:3306".into());
    let sshd_port = std::env::var("WARDEN_TEST_SSHD_PORT").unwrap_or_else(|_| "2201".into());
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let stack = "/var/tmp/warden-test-k8s";
    let k8s_url = env("WARDEN_TEST_K8S_URL", "https://127.0.0.1:16443");
    let httpbin = env("WARDEN_TEST_HTTPBIN_URL", "http://127.0.0.1:18080");
    let authority = |url: &str| {
        url.split("//")
            .nth(1)
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    };
    site.run_agent(
        &key,
        &format!(
            "{pg},{mariadb},127.0.0.1:{sshd_port},{},{}",
            authority(&k8s_url),
            authority(&httpbin)
        ),
    );
    site.wait_processes("dc-east", 1);

    site.add_pg("billing", &format!("{pg}/postgres"), Some("dc-east"));
    site.add_pg("direct", &format!("{pg}/postgres"), None);
    // Allowed by nobody: the agent's allowlist names other ports.
    site.add_pg("elsewhere", "127.0.0.1:1/postgres", Some("dc-east"));
    site.api(
        "POST",
        "/api/connections",
        Some(
            &json!({"name": "shop", "kind": "mysql", "target": format!("{mariadb}/warden_t"),
                     "username": "warden_t_native", "secret": "native-pw-1",
                     "allowed_groups": ["ops"], "agent": "dc-east", "tls": {"mode": "disable"}}),
        ),
    );
    let (mut ssh_body, _) = sshd_connection(&["ops"]);
    ssh_body["agent"] = json!("dc-east");
    site.api("POST", "/api/connections", Some(&ssh_body));
    let held = std::fs::read_to_string(env(
        "WARDEN_TEST_K8S_TOKEN_FILE",
        &format!("{stack}/admin.token"),
    ))
    .unwrap();
    let cluster_ca =
        std::fs::read_to_string(env("WARDEN_TEST_K8S_CA", &format!("{stack}/ca.crt"))).unwrap();
    site.api(
        "POST",
        "/api/connections",
        Some(
            &json!({"name": "cluster", "kind": "kubernetes", "target": k8s_url,
                     "tls": {"ca_pem": cluster_ca}, "secret": held.trim(),
                     "allowed_groups": ["ops"], "agent": "dc-east"}),
        ),
    );
    site.api(
        "POST",
        "/api/connections",
        Some(&json!({"name": "wiki", "kind": "http", "target": httpbin,
                     "allowed_groups": ["ops"], "agent": "dc-east"})),
    );
    let token = site.user_token();

    // The gateway alone cannot reach the database: the namespace is real.
    let out = site.psql("direct", &token, "SELECT 1");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot connect to"),
        "{}",
        text(&out.stderr)
    );

    // Through the agent: psql, mysql, ssh.
    let out = site.psql("billing", &token, "SELECT 'via agent', current_user");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via agent|warden_t_scram\n");
    let out = mysql(&site, "shop", &token, "SELECT CONCAT('via ', 'agent')");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via agent\n");
    let ssh_port = site.port("SSH");
    let out = run(ssh_client("ssh", &token).args([
        "-p",
        &ssh_port,
        &format!("box@{}", site.netns.ns_ip),
        "echo",
        "via",
        "agent",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via agent\n");

    // kubectl and curl: the cluster's TLS (its CA pinned) runs inside the tunnel.
    let kubectl = env(
        "WARDEN_TEST_KUBECTL",
        "/var/cache/warden-test/k8s-1.37.2-etcd-3.6.16-kwok-0.8.0-r2/kubectl",
    );
    let k8s_port = site.port("Kubernetes");
    let out = run(Command::new(&kubectl).args([
        &format!("--server=https://{}:{k8s_port}/cluster", site.netns.ns_ip),
        &format!("--certificate-authority={}", site.ca.display()),
        &format!("--token={token}"),
        "get",
        "namespaces",
        "-o",
        "name",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("namespace/default"),
        "{}",
        text(&out.stdout)
    );
    let out = run(Command::new("curl")
        .args(["-fsS", "--cacert", site.ca.to_str().unwrap()])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!(
            "https://{}:{}/wiki/get?via=agent",
            site.netns.ns_ip,
            site.port("HTTP")
        )));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("agent"), "{}", text(&out.stdout));

    // 100 MiB each way with scp, intact.
    let local = site.dir.path().join("big.bin");
    let made = run(Command::new("head")
        .args(["-c", "104857600", "/dev/urandom"])
        .stdout(std::fs::File::create(&local).unwrap()));
    assert!(made.status.success());
    let sum = sha256(&local);
    let remote = format!("/tmp/warden-t-agent-{}.bin", std::process::id());
    let target = format!("box@{}:{remote}", site.netns.ns_ip);
    let up =
        run(ssh_client("scp", &token).args(["-P", &ssh_port, local.to_str().unwrap(), &target]));
    assert!(up.status.success(), "{}", text(&up.stderr));
    std::fs::remove_file(&local).unwrap();
    let back = site.dir.path().join("back.bin");
    let down =
        run(ssh_client("scp", &token).args(["-P", &ssh_port, &target, back.to_str().unwrap()]));
    let _ = std::fs::remove_file(&remote);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_eq!(sha256(&back), sum);
    std::fs::remove_file(&back).unwrap();

    // Outside the allowlist: refused by the agent, and psql says why.
    let out = site.psql("elsewhere", &token, "SELECT 1");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("agent `dc-east`") && err.contains("allowlist"),
        "{err}"
    );

    // Every dial is audited, in its session; the agent's status counts sessions.
    let dials = site.events("agent.dial");
    let outcomes: Vec<(&str, &str)> = dials
        .iter()
        .map(|e| {
            let p = &e["event"]["payload"];
            (
                p["outcome"].as_str().unwrap(),
                p["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("connected", pg.as_str())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("connected", mariadb.as_str())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("refused", "127.0.0.1:1")),
        "{outcomes:?}"
    );
    assert!(
        dials.iter().all(|e| e["event"]["session_id"].is_string()),
        "{dials:?}"
    );
    assert_eq!(site.events("agent.connect").len(), 1);
    let agent = site.api("GET", "/api/agents/dc-east", None);
    assert_eq!(agent["status"], "online");
    // psql, mysql, ssh, two scp and the refused psql.
    assert!(agent["sessions_carried"].as_i64().unwrap() >= 5, "{agent}");
    // `warden agents` shows it too.
    let listed = run(warden(site.dir.path())
        .args(["agents", "--gateway", &site.url()])
        .env("WARDEN_TOKEN", ADMIN)
        .env("SSL_CERT_FILE", &site.ca));
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let table = text(&listed.stdout);
    assert!(
        table.contains("dc-east") && table.contains("online"),
        "{table}"
    );
    // Nothing of the agent key in the gateway's own output.
    let gw = site.gateway.take().unwrap();
    let err = stop(gw);
    assert!(
        !err.contains(&key),
        "the agent key reached the gateway's log"
    );
    assert!(
        !site.agent_log(0).contains(&key),
        "the agent key reached the agent's log"
    );
}

/// Which of `site`'s agent processes carries a stream now (by the instance id its
/// log names).
fn carrier(site: &Site, agent: &str, count: usize) -> usize {
    let busy: Vec<String> = site
        .processes(agent)
        .iter()
        .filter(|p| p["open_streams"].as_u64() > Some(0))
        .map(|p| p["instance"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(busy.len(), 1, "{busy:?}");
    (0..count)
        .find(|&i| site.agent_log(i).contains(&format!("instance={}", busy[0])))
        .unwrap_or_else(|| panic!("no agent log names instance {}", busy[0]))
}

#[test]
fn a_killed_agent_ends_only_its_sessions_and_revocation_closes_the_tunnel_at_once() {
    let Some(mut site) = Site::start() else {
        return;
    };
    let key = site.add_agent("dc-west");
    let pg = "127.0.0.1:5432";
    site.add_pg("ledger", &format!("{pg}/postgres"), Some("dc-west"));
    site.api(
        "POST",
        "/api/connections",
        Some(
            &json!({"name": "shop", "kind": "mysql", "target": "127.0.0.1:3306/warden_t",
                     "username": "warden_t_native", "secret": "native-pw-1",
                     "allowed_groups": ["ops"], "agent": "dc-west", "tls": {"mode": "disable"}}),
        ),
    );
    let (mut ssh_body, _) = sshd_connection(&["ops"]);
    ssh_body["agent"] = json!("dc-west");
    site.api("POST", "/api/connections", Some(&ssh_body));
    let token = site.user_token();
    // Two processes of one agent share its sessions.
    site.run_agent(&key, "127.0.0.0/8");
    site.run_agent(&key, "127.0.0.0/8");
    site.wait_processes("dc-west", 2);

    // Session one, then kill -9 the process that carries it.
    let mut one = site.psql_session("ledger", &token);
    one.send("SELECT 'one-' || 1;");
    one.wait_for("one-1", "");
    let victim = carrier(&site, "dc-west", 2);
    // A second session goes to the other process (the one carrying fewer).
    let mut kept = site.psql_session("ledger", &token);
    kept.send("SELECT 'kept-' || 1;");
    kept.wait_for("kept-1", "");
    site.agents[victim].kill().unwrap();
    site.agents[victim].wait().unwrap();
    // Its session ends: the next statement fails with the connection.
    one.wait_for("database closed the connection", "SELECT 'still-' || 1;");
    // The other process's session goes on.
    kept.send("SELECT 'kept-' || 2;");
    kept.wait_for("kept-2", "");
    assert!(!kept.output().contains("closed"), "{}", kept.output());
    // New sessions go to the other process straight away.
    let out = site.psql("ledger", &token, "SELECT 'two-' || 2");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "two-2\n");
    site.wait_processes("dc-west", 1);
    let gone = site.events("agent.disconnect");
    assert_eq!(gone.len(), 1, "{gone:?}");

    // Revocation mid-session: the open session ends at once, the agent cannot come
    // back, and new sessions fail naming the agent (psql, mysql and ssh each say so).
    let mut three = site.psql_session("ledger", &token);
    three.send("SELECT 'three-' || 3;");
    three.wait_for("three-3", "");
    site.api("POST", "/api/agents/dc-west/revoke", None);
    three.wait_for("database closed the connection", "SELECT 'still-' || 3;");
    assert!(site.processes("dc-west").is_empty());
    let out = site.psql("ledger", &token, "SELECT 1");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("network agent `dc-west` is not connected"),
        "{err}"
    );
    let out = mysql(&site, "shop", &token, "SELECT 1");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("network agent `dc-west` is not connected"),
        "{err}"
    );
    let out = run(ssh_client("ssh", &token).args([
        "-p",
        &site.port("SSH"),
        &format!("box@{}", site.netns.ns_ip),
        "true",
    ]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("network agent `dc-west` is not connected"),
        "{err}"
    );
    let survivor = 1 - victim;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !site.agent_log(survivor).contains("agent_revoked") {
        assert!(Instant::now() < deadline, "{}", site.agent_log(survivor));
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = site.events("agent.refused");
    assert!(
        refused
            .iter()
            .any(|e| e["event"]["payload"]["code"] == "agent_revoked"),
        "{refused:?}"
    );
    let offline: Vec<Value> = site
        .events("agent.dial")
        .into_iter()
        .filter(|e| e["event"]["payload"]["outcome"] == "offline")
        .collect();
    assert!(offline.len() >= 3, "{offline:?}");

    // A new key brings it back.
    let rotated = site.api("POST", "/api/agents/dc-west/rotate", None);
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    site.run_agent(&new_key, "127.0.0.0/8");
    site.wait_processes("dc-west", 1);
    let out = site.psql("ledger", &token, "SELECT 'four-' || 4");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // An agent a connection names cannot be deleted.
    let (status, answer) = site.api_as(ADMIN, "DELETE", "/api/agents/dc-west", None);
    assert_eq!(status, 409, "{answer}");
    one.finish();
    kept.finish();
    three.finish();
}

#[test]
fn agents_reconnect_after_a_gateway_restart_and_no_audit_is_lost() {
    let Some(mut site) = Site::start() else {
        return;
    };
    let key = site.add_agent("dc-north");
    site.add_pg("ledger", "127.0.0.1:5432/postgres", Some("dc-north"));
    let token = site.user_token();
    site.run_agent(&key, "127.0.0.1:5432");
    site.wait_processes("dc-north", 1);
    let out = site.psql("ledger", &token, "SELECT 'before'");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let gw = site.gateway.take().unwrap();
    stop(gw);
    site.start_gateway();
    // The agent comes back on its own, within its backoff.
    site.wait_processes("dc-north", 1);
    let out = site.psql("ledger", &token, "SELECT 'after'");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "after\n");
    assert_eq!(site.events("agent.connect").len(), 2);
    let disconnects = site.events("agent.disconnect");
    assert_eq!(disconnects.len(), 1, "{disconnects:?}");
    let connected: Vec<Value> = site
        .events("agent.dial")
        .into_iter()
        .filter(|e| e["event"]["payload"]["outcome"] == "connected")
        .collect();
    assert_eq!(connected.len(), 2, "{connected:?}");
    let verified = site.api("GET", "/api/audit/verify", None);
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn an_agent_refuses_what_it_is_not_given() {
    let Some(site) = Site::start() else { return };
    let dir = site.dir.path();
    let agent = |args: &[&str]| run(warden(dir).arg("agent").args(args));
    // Plain http only to this machine: the key would cross the network in clear.
    let out = agent(&[
        "--gateway",
        &site.url().replace("https", "http"),
        "--token",
        "wagt_x_y",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("plain http"),
        "{}",
        text(&out.stderr)
    );
    // Not an agent key; a bad allowlist entry.
    let out = agent(&["--gateway", &site.url(), "--token", "wdn_abc_def"]);
    assert!(
        text(&out.stderr).contains("not an agent key"),
        "{}",
        text(&out.stderr)
    );
    let out = agent(&[
        "--gateway",
        &site.url(),
        "--token",
        "wagt_x_y",
        "--allow",
        "10.0.0.0/33",
    ]);
    assert!(
        text(&out.stderr).contains("10.0.0.0/33"),
        "{}",
        text(&out.stderr)
    );
    // A wrong key is refused and audited; the gateway's certificate must verify.
    let wrong_key = |pin_ca: bool| {
        let mut cmd = warden(dir);
        cmd.args(["agent", "--gateway", &site.url()]);
        if pin_ca {
            cmd.args(["--ca", site.ca.to_str().unwrap()]);
        }
        cmd.args([
            "--token",
            "wagt_0123456789abcdef_00",
            "--allow",
            "127.0.0.1:1",
        ])
        .env("WARDEN_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let mut bad = wrong_key(true);
    site.wait_event("agent.refused", "invalid_agent_key");
    let _ = bad.kill();
    let mut untrusted = wrong_key(false);
    std::thread::sleep(Duration::from_secs(1));
    let _ = untrusted.kill();
    let out = untrusted.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(!site.events("agent.refused").is_empty());
    let _ = bad.wait();
    assert!(
        text(&out.stderr).is_empty() || !text(&out.stderr).contains("wagt_0123456789abcdef_00"),
        "the key reached the agent's log"
    );
    // A registration limited to other networks refuses its key from here.
    let fenced = site.api(
        "POST",
        "/api/agents",
        Some(&json!({"name": "fenced", "sources": ["192.0.2.0/24"]})),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut site = site;
    site.run_agent(&fenced, "127.0.0.1:1");
    site.wait_event("agent.refused", "agent_source_refused");
    assert!(site.processes("fenced").is_empty());
    let widened = site.api(
        "PATCH",
        "/api/agents/fenced",
        Some(&json!({"sources": [format!("{}/32", site.netns.host_ip)]})),
    );
    assert_eq!(widened["sources"][0], format!("{}/32", site.netns.host_ip));
    site.wait_processes("fenced", 1);
    // Narrowed again: the open tunnel from outside them is closed.
    site.api(
        "PATCH",
        "/api/agents/fenced",
        Some(&json!({"sources": ["192.0.2.0/24"]})),
    );
    site.wait_processes("fenced", 0);
    // Unknown agents cannot be named by a connection.
    let (status, answer) = site.api_as(
        ADMIN,
        "POST",
        "/api/connections",
        Some(
            &json!({"name": "x", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                     "username": "u", "secret": "p", "agent": "no-such-agent"}),
        ),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "unknown_agent");
}
