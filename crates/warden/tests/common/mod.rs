//! What the binary's tests share: gateway processes started as a user starts them,
//! admin calls, and reading a child's output.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub fn warden(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.current_dir(dir)
        // Only this test's settings: no WARDEN_* from the outer environment.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WARDEN_API__LISTEN", "127.0.0.1:0")
        .env("WARDEN_PG__LISTEN", "127.0.0.1:0")
        .env("WARDEN_MYSQL__LISTEN", "127.0.0.1:0")
        .env("WARDEN_SSH__LISTEN", "127.0.0.1:0")
        .env("WARDEN_KUBERNETES__LISTEN", "127.0.0.1:0")
        .env("WARDEN_HTTP__LISTEN", "127.0.0.1:0");
    cmd
}

/// A gateway process: its URL, the admin key its first start handed over (shown or
/// written to a file), and its output so far.
pub struct Running {
    pub child: Child,
    pub url: String,
    pub printed_key: Option<String>,
    pub stdout_head: String,
}

pub fn start_gateway(dir: &Path) -> Running {
    start_gateway_with(dir, &[])
}

/// A gateway with extra environment (such as `WARDEN_CONFIG`).
pub fn start_gateway_with(dir: &Path, envs: &[(&str, &str)]) -> Running {
    let mut cmd = warden(dir);
    cmd.arg("gateway");
    spawn_gateway(&mut cmd, dir, envs)
}

/// A gateway whose standard output is a terminal (run under `script`), as a person
/// starts it by hand; its log goes to the same terminal.
pub fn start_gateway_in_terminal(dir: &Path, envs: &[(&str, &str)]) -> Running {
    let mut cmd = warden(dir);
    let bin = env!("CARGO_BIN_EXE_warden");
    let mut script = Command::new("script");
    script
        .current_dir(dir)
        .env_clear()
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .args(["-qfec", &format!("exec {bin} gateway"), "/dev/null"]);
    cmd = script;
    spawn_gateway(&mut cmd, dir, envs)
}

/// The admin key a first start handed over: shown on its terminal, or written to the
/// file its output names.
fn admin_key_of(dir: &Path, head: &str) -> Option<String> {
    if let Some(key) = head.split_whitespace().find(|w| w.starts_with("wdn_admin")) {
        return Some(key.to_string());
    }
    let path = head
        .lines()
        .find_map(|l| l.split("admin API key written to ").nth(1))?
        .split_whitespace()
        .next()?;
    let key = std::fs::read_to_string(dir.join(path)).unwrap();
    Some(key.trim().to_string())
}

pub fn spawn_gateway(cmd: &mut Command, dir: &Path, envs: &[(&str, &str)]) -> Running {
    // stderr is read only when the gateway stops: a test that moves much data sets
    // a quieter WARDEN_LOG in `envs`, or a full pipe would stall the gateway.
    let mut child = cmd
        .env("WARDEN_LOG", "debug")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("gateway exited early:\n{head}\n{err}");
        }
        head.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("warden gateway listening on ") {
            // Keep draining stdout so the gateway never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            return Running {
                child,
                url: url.to_string(),
                printed_key: admin_key_of(dir, &head),
                stdout_head: head,
            };
        }
    }
}

/// SIGTERM, then the exit status and everything the gateway wrote to stderr.
pub fn stop(mut running: Running) -> String {
    Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    let mut err = String::new();
    running
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = running.child.wait().unwrap();
    assert!(
        status.success(),
        "gateway did not stop cleanly: {status}\n{err}"
    );
    err
}

/// Calls the API with `token`; returns the status and the JSON answer (null when
/// there is none).
pub fn call(
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
}

/// POSTs JSON with the admin key and returns the (successful) answer.
pub fn post_admin(url: &str, admin: &str, path: &str, body: &Value) -> Value {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{url}{path}"))
            .bearer_auth(admin)
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        resp.json::<Value>().await.unwrap()
    })
}

/// The `box` SSH connection to the test OpenSSH server (`setup_sshd`), for `groups`,
/// and the held key it carries.
pub fn sshd_connection(groups: &[&str]) -> (Value, String) {
    let dir = std::path::PathBuf::from(
        std::env::var("WARDEN_TEST_SSHD_DIR")
            .unwrap_or_else(|_| "/var/tmp/warden-test-sshd".into()),
    );
    let port = std::env::var("WARDEN_TEST_SSHD_PORT").unwrap_or_else(|_| "2201".into());
    let key = std::fs::read_to_string(dir.join("warden_t_key")).unwrap();
    let host_key = std::fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
    let body = json!({"name": "box", "kind": "ssh", "target": format!("127.0.0.1:{port}"),
                      "username": "warden_t", "secret": key, "allowed_groups": groups,
                      "ssh": {"host_key": host_key}});
    (body, key)
}

/// `ssh` through the gateway's SSH listener on `port` to connection `box`, with a
/// PTY, the token as password (sshpass) and no host key checks (test keys).
pub fn ssh_box(port: &str, token: &str) -> Command {
    let mut cmd = Command::new("sshpass");
    cmd.args(["-e", "ssh", "-tt", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "PubkeyAuthentication=no", "-p", port, "box@127.0.0.1"])
        .env("SSHPASS", token);
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

pub fn provider_issuer() -> String {
    std::env::var("WARDEN_TEST_OIDC_ISSUER")
        .expect("the test OpenID provider (scripts/test.sh starts it)")
}

/// An access token of the test provider's client `client` (secret `<client>-secret`,
/// audience `urn:warden`), through the client credentials grant.
pub fn client_token(client: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer: Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/token", provider_issuer()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", &format!("{client}-secret")),
                ("resource", "urn:warden"),
                ("scope", "api"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    answer["access_token"].as_str().unwrap().to_string()
}

/// A gateway whose config file trusts the test provider (audience `urn:warden`)
/// and holds `extra` TOML, with `envs` set.
pub fn start_gateway_trusting_provider(dir: &Path, extra: &str, envs: &[(&str, &str)]) -> Running {
    let issuer = provider_issuer();
    let config = dir.join("warden.toml");
    std::fs::write(
        &config,
        format!("[[auth.oidc]]\nissuer = \"{issuer}\"\naudiences = [\"urn:warden\"]\n\n{extra}"),
    )
    .unwrap();
    let path = config.to_string_lossy().into_owned();
    let mut all = vec![("WARDEN_CONFIG", path.as_str())];
    all.extend_from_slice(envs);
    start_gateway_with(dir, &all)
}

/// An API key for `subject` in `group`, issued with the admin key.
pub fn api_key(url: &str, admin: &str, subject: &str, group: &str) -> String {
    post_admin(
        url,
        admin,
        "/api/api-keys",
        &json!({"name": subject, "subject": subject, "groups": [group]}),
    )["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Reads a child's stdout until a line starting with `prefix`; returns the rest of
/// that line, or the next line when the prefix ends its line.
pub fn line_after(reader: &mut impl BufRead, prefix: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no `{prefix}` in {seen}"
        );
        seen.push_str(&line);
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            if rest.trim().is_empty() {
                let mut next = String::new();
                reader.read_line(&mut next).unwrap();
                return next.trim().to_string();
            }
            return rest.trim().to_string();
        }
    }
}

impl Running {
    /// Where the `protocol` proxy (`PostgreSQL`, `MySQL`, `SSH`) listens, as printed.
    pub fn listener(&self, protocol: &str) -> String {
        let prefix = format!("{protocol} proxy listening on ");
        self.stdout_head
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {protocol} listener in {}", self.stdout_head))
            .to_string()
    }

    /// Its port only.
    pub fn port(&self, protocol: &str) -> String {
        self.listener(protocol)
            .rsplit_once(':')
            .unwrap()
            .1
            .to_string()
    }
}

/// A client program driven through its stdin, its output collected as it comes.
pub struct Interactive {
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Interactive {
    pub fn spawn(cmd: &mut Command) -> Interactive {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdin = child.stdin.take();
        Interactive { child, stdin, out }
    }

    /// Types `line` (a newline is added); a client that is gone ignores it.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        if let Some(stdin) = &mut self.stdin
            && (stdin.write_all(format!("{line}\n").as_bytes()).is_err() || stdin.flush().is_err())
        {
            self.stdin = None;
        }
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits (bounded) until its output contains `needle`; `probe` is typed every
    /// half second meanwhile (empty: nothing).
    pub fn wait_for(&mut self, needle: &str, probe: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `{needle}` in:\n{out}"
            );
            if !probe.is_empty() {
                self.send(probe);
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// Closes its stdin and waits for it to exit.
    pub fn finish(mut self) -> String {
        self.stdin = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.output()
    }
}

/// A browser without a screen, for the test OpenID provider and the console's login:
/// keeps cookies (sent to every host: the tests' are all on 127.0.0.1), follows
/// redirects by hand, remembers where it went.
pub struct Browser {
    pub http: reqwest::Client,
    pub cookies: std::collections::BTreeMap<String, String>,
    pub visited: Vec<String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Default::default(),
            visited: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// One request (a POST of `form`, when given), no redirect followed: the
    /// response, its cookies kept.
    async fn send(&mut self, url: &str, form: Option<Vec<(String, String)>>) -> reqwest::Response {
        self.visited.push(url.to_string());
        let req = match form {
            Some(f) => self.http.post(url).form(&f),
            None => self.http.get(url),
        };
        let resp = req
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        resp
    }

    /// One GET, no redirect followed: status, `Location`.
    pub async fn step(&mut self, url: &str) -> (u16, Option<String>) {
        let resp = self.send(url, None).await;
        let location = resp
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        (resp.status().as_u16(), location)
    }

    /// Requests `url` (a POST of `form`, when given) and follows redirects; returns
    /// where it ended and the last page.
    pub async fn go_to(
        &mut self,
        url: &str,
        form: Option<Vec<(String, String)>>,
    ) -> (String, String) {
        let mut url = reqwest::Url::parse(url).unwrap();
        let mut form = form;
        for _ in 0..20 {
            let resp = self.send(url.as_str(), form.take()).await;
            if resp.status().is_redirection() {
                let location = resp.headers()["location"].to_str().unwrap().to_string();
                url = url.join(&location).unwrap();
                continue;
            }
            return (url.to_string(), resp.text().await.unwrap());
        }
        panic!("too many redirects");
    }

    /// [`Self::go_to`], the last page only.
    pub async fn go(&mut self, url: &str, form: Option<Vec<(String, String)>>) -> String {
        self.go_to(url, form).await.1
    }

    /// Follows redirects from `url`; returns where it ended.
    pub async fn follow(&mut self, url: &str) -> String {
        self.go_to(url, None).await.0
    }
}
