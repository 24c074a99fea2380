//! `warden connect <connection>`: a local listener whose every connection is
//! carried to the gateway through its own tunnel (an HTTP/1.1 upgrade on the API
//! port, HTTPS when the gateway has a certificate), authenticated with the caller's
//! token. The gateway's proxy serves it like a direct client, so guardrails, masks,
//! reviews and recordings apply; the local client needs no password.

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, BytesMut};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::client::ApiArgs;
use crate::login::{gateway_key, token_for};

/// `warden connect`.
pub async fn connect(connection: String, port: u16, args: ApiArgs) -> Result<ExitCode> {
    let gateway = gateway_key(&args.gateway);
    let token = token_for(&gateway, args.token.as_deref()).await?;
    let http = reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?;
    let kind = connection_kind(&http, &gateway, &connection, &token).await?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let local = listener.local_addr()?;
    let p = local.port();
    let client = match kind.as_str() {
        "postgres" => {
            format!("psql \"host=127.0.0.1 port={p} dbname={connection} sslmode=disable\"")
        }
        "mysql" => format!("mysql -h 127.0.0.1 -P {p} --protocol=TCP {connection}"),
        "ssh" => {
            format!("ssh -p {p} -o NoHostAuthenticationForLocalhost=yes {connection}@127.0.0.1")
        }
        "kubernetes" => {
            let path = write_kubeconfig(&connection, p)?;
            format!(
                "kubectl --kubeconfig {path} get pods\n  (context `warden-{connection}`; add the file to KUBECONFIG to keep your other contexts)"
            )
        }
        "http" => format!("curl http://127.0.0.1:{p}/   (or open it in a browser)"),
        other => bail!("`warden connect` does not tunnel {other} connections"),
    };
    // One write, and a reader that went away (`| head`) does not stop the tunnels.
    if args.json {
        say(&serde_json::json!({
            "connection": connection, "kind": kind, "listen": local.to_string(),
            "gateway": gateway, "command": client.lines().next().unwrap_or_default(),
        })
        .to_string());
    } else {
        say(&format!(
            "Forwarding {local} to `{connection}` through {gateway}. Connect with:\n  {client}\nCtrl-C to stop."
        ));
    }
    // The tunnels' own client: no overall timeout (sessions last), HTTP/1.1 for the
    // upgrade.
    let tunnel_http = reqwest::Client::builder().http1_only().build()?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let (gateway, connection, given, kind) =
                    (gateway.clone(), connection.clone(), args.token.clone(), kind.clone());
                let http = tunnel_http.clone();
                tokio::spawn(async move {
                    if let Err(e) = tunnel(http, stream, &gateway, &connection, &kind, given.as_deref()).await {
                        eprintln!("warden: connection from {peer} closed: {e:#}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => {
                say("closed");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Prints a line on standard output in one write; an error (the reader is gone) is
/// ignored.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{text}\n").as_bytes());
    let _ = out.flush();
}

/// Writes a kubeconfig whose context `warden-<connection>` points kubectl at the local
/// port (no credential in it: the tunnel carries the token); returns its path.
fn write_kubeconfig(connection: &str, port: u16) -> Result<String> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("warden-{connection}.kubeconfig"));
    let name = format!("warden-{connection}");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: {name}\n  user: {{}}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\n"
    );
    std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.display().to_string())
}

/// Carries one local connection through its own tunnel.
async fn tunnel(
    http: reqwest::Client,
    mut local: TcpStream,
    gateway: &str,
    connection: &str,
    kind: &str,
    given: Option<&str>,
) -> Result<()> {
    let _ = local.set_nodelay(true);
    // Fetched (and renewed) for each connection: a tunnel opened after the login
    // expired is refused like any request.
    let token = match token_for(gateway, given).await {
        Ok(t) => t,
        Err(e) => return refuse(&mut local, kind, &format!("{e:#}")).await,
    };
    let mut remote = match open_tunnel(&http, gateway, connection, &token).await {
        Ok(r) => r,
        Err(TunnelError::Refused(message)) => return refuse(&mut local, kind, &message).await,
        Err(TunnelError::Failed(e)) => return Err(e),
    };
    tokio::io::copy_bidirectional(&mut local, &mut remote).await?;
    Ok(())
}

pub enum TunnelError {
    /// The gateway answered, and said why not.
    Refused(String),
    Failed(anyhow::Error),
}

/// Opens one tunnel to `connection`'s proxy.
pub async fn open_tunnel(
    http: &reqwest::Client,
    gateway: &str,
    connection: &str,
    token: &str,
) -> Result<reqwest::Upgraded, TunnelError> {
    let resp = http
        .get(format!("{gateway}/api/connections/{connection}/tunnel"))
        .header(reqwest::header::CONNECTION, "Upgrade")
        .header(reqwest::header::UPGRADE, "warden-tunnel")
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))
        .map_err(TunnelError::Failed)?;
    if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(TunnelError::Refused(format!(
            "the gateway refused the tunnel ({}): {}",
            body["error"]["code"].as_str().unwrap_or(status.as_str()),
            body["error"]["message"]
                .as_str()
                .unwrap_or("no reason given")
        )));
    }
    resp.upgrade()
        .await
        .map_err(|e| TunnelError::Failed(anyhow!("the tunnel did not open: {e}")))
}

/// The connection's kind (`postgres`, `ssh`, ...), or why it cannot be used.
pub async fn connection_kind(
    http: &reqwest::Client,
    gateway: &str,
    connection: &str,
    token: &str,
) -> Result<String> {
    let resp = http
        .get(format!("{gateway}/api/connections/{connection}"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    let status = resp.status();
    let conn: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{}",
            conn["error"]["message"]
                .as_str()
                .unwrap_or("the gateway refused the request")
        );
    }
    Ok(conn["kind"].as_str().unwrap_or("").to_string())
}

/// Closes a local connection the gateway would not tunnel. A PostgreSQL client is
/// told why (a FATAL ErrorResponse, which libpq prints whatever it sent first);
/// other clients see the connection close, and the reason is on this command's
/// stderr.
async fn refuse(local: &mut TcpStream, kind: &str, message: &str) -> Result<()> {
    if kind != "postgres" {
        let _ = local.shutdown().await;
        return Err(anyhow!("{message}"));
    }
    let mut body = BytesMut::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28000"),
        (b'M', message),
    ] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    frame.put_u8(b'E');
    frame.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
    frame.put_slice(&body);
    let _ = warden_net::write_flushed(local, &frame).await;
    let _ = local.shutdown().await;
    Err(anyhow!("{message}"))
}
