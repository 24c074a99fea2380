//! `warden login`, `logout` and `whoami`, and the token cache the other commands use.
//!
//! The gateway names the OpenID provider and the CLI's client (`GET
//! /api/auth/config`); login is the authorization code flow with PKCE through a
//! loopback redirect (RFC 8252), or the device authorization grant (RFC 8628) for
//! machines without a browser. Tokens are cached per gateway in
//! `$XDG_CONFIG_HOME/warden/tokens.json` (or `~/.config/warden`), 0600, and renewed
//! with the refresh token when they expire. `WARDEN_TOKEN` bypasses all of it (CI).

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A token is renewed this long before it expires.
const RENEW_BEFORE_SECS: i64 = 30;
/// How long a login waits for the browser or the device approval.
pub(crate) const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// One gateway's cached login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedLogin {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct TokenFile {
    #[serde(default)]
    pub(crate) gateways: BTreeMap<String, CachedLogin>,
}

/// The cache file; `None` when the environment names no home for it.
fn cache_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("warden").join("tokens.json"))
}

pub(crate) fn load() -> Result<TokenFile> {
    let Some(path) = cache_path() else {
        return Ok(TokenFile::default());
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a Warden token cache", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the cache: directory 0700, file 0600, replaced atomically.
pub(crate) fn save(file: &TokenFile) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = cache_path().ok_or_else(|| {
        anyhow!("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the login")
    })?;
    let dir = path.parent().ok_or_else(|| anyhow!("bad cache path"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".tokens.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::io::Write::write_all(&mut out, &serde_json::to_vec_pretty(file)?)?;
    out.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn gateway_key(gateway: &str) -> String {
    gateway.trim_end_matches('/').to_string()
}

/// Tokens go to the gateway over HTTPS, or plain HTTP only on this machine.
pub(crate) fn check_transport(gateway: &str) -> Result<()> {
    let url = reqwest::Url::parse(gateway)
        .with_context(|| format!("`{gateway}` is not a gateway URL (https://...)"))?;
    let host = url
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => bail!(
            "refusing to send a token to {gateway} over plain HTTP: use the gateway's https:// address"
        ),
        other => bail!("`{other}` is not a gateway URL scheme (https://...)"),
    }
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The gateway of the one cached login, when there is exactly one: where commands that
/// can work offline or through a gateway go when none is named.
pub fn only_cached_gateway() -> Option<String> {
    let file = load().ok()?;
    let mut names = file.gateways.keys();
    match (names.next(), names.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

/// The token to call `gateway` with: `WARDEN_TOKEN` when given, else the cached
/// login, renewed if it is about to expire.
pub async fn token_for(gateway: &str, given: Option<&str>) -> Result<String> {
    if let Some(t) = given.filter(|t| !t.is_empty()) {
        check_transport(&gateway_key(gateway))?;
        return Ok(t.to_string());
    }
    let key = gateway_key(gateway);
    check_transport(&key)?;
    let mut file = load()?;
    let Some(login) = file.gateways.get(&key).cloned() else {
        bail!("not logged in to {key}: run `warden login --gateway {key}` (or set WARDEN_TOKEN)");
    };
    if login.expires_at > now() + RENEW_BEFORE_SECS {
        return Ok(login.access_token);
    }
    let Some(refresh) = &login.refresh_token else {
        let saml = if login.issuer.starts_with("saml:") {
            " --saml"
        } else {
            ""
        };
        bail!("your login to {key} has expired: run `warden login{saml} --gateway {key}`");
    };
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", refresh.clone()),
        ("client_id", login.client_id.clone()),
    ];
    if let Some(r) = &login.resource {
        form.push(("resource", r.clone()));
    }
    let answer = token_request(&http()?, &login.token_endpoint, &form)
        .await
        .map_err(|e| anyhow!("your login to {key} has expired and could not be renewed ({e}): run `warden login --gateway {key}`"))?;
    let renewed = cached_from(&answer, &login)?;
    let token = renewed.access_token.clone();
    file.gateways.insert(key, renewed);
    save(&file)?;
    Ok(token)
}

/// POSTs a form to a token endpoint; an OAuth error comes back as its code.
async fn token_request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, String)],
) -> Result<Value, TokenError> {
    let resp = http
        .post(endpoint)
        .form(form)
        .send()
        .await
        .map_err(|e| TokenError::Other(format!("cannot reach the identity provider: {e}")))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    match body["error"].as_str() {
        Some(code) => Err(TokenError::OAuth {
            code: code.to_string(),
            description: body["error_description"].as_str().unwrap_or("").to_string(),
        }),
        None => Err(TokenError::Other(format!(
            "the identity provider answered HTTP {status}"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
enum TokenError {
    #[error("{code}: {description}")]
    OAuth { code: String, description: String },
    #[error("{0}")]
    Other(String),
}

fn cached_from(answer: &Value, base: &CachedLogin) -> Result<CachedLogin> {
    let access_token = answer["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("the identity provider sent no access token"))?
        .to_string();
    Ok(CachedLogin {
        access_token,
        // A provider that rotates refresh tokens sends a new one; others keep the old.
        refresh_token: answer["refresh_token"]
            .as_str()
            .map(String::from)
            .or_else(|| base.refresh_token.clone()),
        expires_at: now() + answer["expires_in"].as_i64().unwrap_or(300),
        ..base.clone()
    })
}

/// What the gateway says about logging in, and the provider's endpoints.
struct LoginSetup {
    base: CachedLogin,
    scopes: String,
    authorization_endpoint: Option<String>,
    device_endpoint: Option<String>,
}

async fn setup(http: &reqwest::Client, gateway: &str) -> Result<LoginSetup> {
    let resp = http
        .get(format!("{gateway}/api/auth/config"))
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    let status = resp.status();
    let config: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{}",
            config["error"]["message"]
                .as_str()
                .unwrap_or("the gateway does not offer CLI login")
        );
    }
    let issuer = config["issuer"]
        .as_str()
        .ok_or_else(|| anyhow!("no issuer"))?;
    let discovery: Value = http
        .get(format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .send()
        .await
        .with_context(|| format!("cannot reach the identity provider at {issuer}"))?
        .json()
        .await
        .context("the identity provider's discovery document is not JSON")?;
    let endpoint = |k: &str| discovery[k].as_str().map(String::from);
    Ok(LoginSetup {
        base: CachedLogin {
            access_token: String::new(),
            refresh_token: None,
            expires_at: 0,
            issuer: issuer.to_string(),
            client_id: config["client_id"]
                .as_str()
                .ok_or_else(|| anyhow!("no client id"))?
                .to_string(),
            token_endpoint: endpoint("token_endpoint")
                .ok_or_else(|| anyhow!("the identity provider has no token endpoint"))?,
            resource: config["resource"].as_str().map(String::from),
        },
        scopes: config["scopes"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "openid".into()),
        authorization_endpoint: endpoint("authorization_endpoint"),
        device_endpoint: endpoint("device_authorization_endpoint"),
    })
}

pub(crate) fn random_url_safe(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow!("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// `warden login`.
pub async fn login(gateway: &str, device: bool, open_browser: bool) -> Result<()> {
    let gateway = gateway_key(gateway);
    check_transport(&gateway)?;
    let http = http()?;
    let s = setup(&http, &gateway).await?;
    let answer = if device {
        device_login(&http, &s).await?
    } else {
        browser_login(&http, &s, open_browser).await?
    };
    let login = cached_from(&answer, &s.base)?;
    let me = whoami_with(&http, &gateway, &login.access_token).await?;
    let mut file = load()?;
    file.gateways.insert(gateway.clone(), login);
    save(&file)?;
    println!(
        "logged in to {gateway} as {} (groups: {})",
        me["subject"].as_str().unwrap_or("?"),
        groups_of(&me)
    );
    Ok(())
}

async fn device_login(http: &reqwest::Client, s: &LoginSetup) -> Result<Value> {
    let endpoint = s
        .device_endpoint
        .as_deref()
        .ok_or_else(|| anyhow!("the identity provider does not offer the device flow"))?;
    let mut form = vec![
        ("client_id", s.base.client_id.clone()),
        ("scope", s.scopes.clone()),
    ];
    if let Some(r) = &s.base.resource {
        form.push(("resource", r.clone()));
    }
    let start = token_request(http, endpoint, &form)
        .await
        .map_err(|e| anyhow!("the device login could not start: {e}"))?;
    let device_code = start["device_code"]
        .as_str()
        .ok_or_else(|| anyhow!("no device code"))?
        .to_string();
    let code = start["user_code"].as_str().unwrap_or("?");
    match start["verification_uri_complete"].as_str() {
        Some(url) => println!("To log in, open {url}\nand check that it shows the code {code}"),
        None => println!(
            "To log in, open {} and enter the code {code}",
            start["verification_uri"].as_str().unwrap_or("?")
        ),
    }
    let mut interval = Duration::from_secs(start["interval"].as_u64().unwrap_or(5).max(1));
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(start["expires_in"].as_u64().unwrap_or(600)).min(LOGIN_TIMEOUT * 2);
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:device_code".to_string(),
        ),
        ("device_code", device_code),
        ("client_id", s.base.client_id.clone()),
    ];
    loop {
        if tokio::time::Instant::now() > deadline {
            bail!("the device login expired before it was approved");
        }
        tokio::time::sleep(interval).await;
        match token_request(http, &s.base.token_endpoint, &form).await {
            Ok(answer) => return Ok(answer),
            Err(TokenError::OAuth { code, .. }) if code == "authorization_pending" => {}
            Err(TokenError::OAuth { code, .. }) if code == "slow_down" => {
                interval += Duration::from_secs(5);
            }
            Err(TokenError::OAuth { code, .. }) if code == "access_denied" => {
                bail!("the login was denied at the identity provider")
            }
            Err(TokenError::OAuth { code, .. }) if code == "expired_token" => {
                bail!("the device login expired before it was approved")
            }
            Err(e) => bail!("the device login failed: {e}"),
        }
    }
}

async fn browser_login(
    http: &reqwest::Client,
    s: &LoginSetup,
    open_browser: bool,
) -> Result<Value> {
    let endpoint = s
        .authorization_endpoint
        .as_deref()
        .ok_or_else(|| anyhow!("the identity provider has no authorization endpoint"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on the loopback interface for the login's redirect")?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let state = random_url_safe(16)?;
    let verifier = random_url_safe(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let mut url = reqwest::Url::parse(endpoint).context("bad authorization endpoint")?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &s.base.client_id)
            .append_pair("redirect_uri", &redirect)
            .append_pair("scope", &s.scopes)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if s.scopes.split(' ').any(|x| x == "offline_access") {
            // Providers grant a refresh token only with explicit consent.
            q.append_pair("prompt", "consent");
        }
        if let Some(r) = &s.base.resource {
            q.append_pair("resource", r);
        }
    }
    println!("To log in, open this page in your browser:\n{url}");
    if open_browser {
        let _ = std::process::Command::new("xdg-open")
            .arg(url.as_str())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let code = tokio::time::timeout(LOGIN_TIMEOUT, callback(&listener, &state))
        .await
        .map_err(|_| anyhow!("no login within {} s", LOGIN_TIMEOUT.as_secs()))??;
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code),
        ("redirect_uri", redirect),
        ("client_id", s.base.client_id.clone()),
        ("code_verifier", verifier),
    ];
    if let Some(r) = &s.base.resource {
        form.push(("resource", r.clone()));
    }
    token_request(http, &s.base.token_endpoint, &form)
        .await
        .map_err(|e| anyhow!("the login's code could not be exchanged: {e}"))
}

/// Waits for the browser's redirect to the loopback listener and returns its code.
/// Requests that are not the expected redirect (a favicon, a wrong state) are
/// answered and ignored.
pub(crate) async fn callback(listener: &tokio::net::TcpListener, state: &str) -> Result<String> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]).into_owned();
        let target = head.split_whitespace().nth(1).unwrap_or("/");
        // Anything may knock on a loopback port: what is not a redirect is answered
        // and ignored, never taken as the end of the login.
        let url = reqwest::Url::parse(&format!("http://127.0.0.1{target}")).ok();
        let params: BTreeMap<String, String> = url
            .as_ref()
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        let (status, page, outcome) = if url.as_ref().map(reqwest::Url::path) != Some("/callback") {
            ("404 Not Found", "Not found.", None)
        } else if params.get("state").map(String::as_str) != Some(state) {
            (
                "400 Bad Request",
                "This login page is stale: run warden login again.",
                None,
            )
        } else if let Some(err) = params.get("error") {
            let why = params.get("error_description").cloned().unwrap_or_default();
            (
                "200 OK",
                "The login failed; see the terminal.",
                Some(Err(anyhow!("the login was refused: {err} {why}"))),
            )
        } else if let Some(code) = params.get("code") {
            (
                "200 OK",
                "You are logged in to Warden. You can close this page.",
                Some(Ok(code.clone())),
            )
        } else {
            ("400 Bad Request", "No code in this redirect.", None)
        };
        let body = format!("<!doctype html><title>Warden</title><p>{page}</p>");
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = warden_net::write_flushed(&mut stream, answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        if let Some(result) = outcome {
            return result;
        }
    }
}

pub(crate) async fn whoami_with(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
) -> Result<Value> {
    let resp = http
        .get(format!("{gateway}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    gateway_answer(resp)
        .await
        .map_err(|(code, message)| anyhow!("the gateway refused the token ({code}): {message}"))
}

/// A gateway's JSON answer; a refusal as the API error's code and message.
pub(crate) async fn gateway_answer(resp: reqwest::Response) -> Result<Value, (String, String)> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let field = |k: &str, default: &str| body["error"][k].as_str().unwrap_or(default).to_string();
    Err((field("code", "error"), field("message", "no reason given")))
}

pub(crate) fn groups_of(me: &Value) -> String {
    let groups: Vec<&str> = me["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if groups.is_empty() {
        "none".into()
    } else {
        groups.join(", ")
    }
}

/// `warden whoami`.
pub async fn whoami(gateway: &str, given: Option<&str>, json: bool) -> Result<()> {
    let gateway = gateway_key(gateway);
    let token = token_for(&gateway, given).await?;
    let me = whoami_with(&http()?, &gateway, &token).await?;
    if json {
        println!("{me}");
        return Ok(());
    }
    println!("subject  {}", me["subject"].as_str().unwrap_or("?"));
    println!("groups   {}", groups_of(&me));
    println!(
        "admin    {}",
        if me["is_admin"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    );
    if let Some(exp) = me["expires_at"].as_str() {
        println!("expires  {exp}");
    }
    println!("gateway  {gateway}");
    Ok(())
}

/// `warden logout`: forgets the cached login (the provider's session is left alone).
pub fn logout(gateway: &str) -> Result<()> {
    let key = gateway_key(gateway);
    check_transport(&key)?;
    let mut file = load()?;
    if file.gateways.remove(&key).is_some() {
        save(&file)?;
        println!("logged out of {key}");
    } else {
        println!("not logged in to {key}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_transport;

    #[test]
    fn tokens_travel_over_https_or_stay_on_this_machine() {
        for ok in [
            "https://warden.example.com",
            "http://127.0.0.1:8009",
            "http://localhost:1",
            "http://[::1]:8009",
        ] {
            assert!(check_transport(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://warden.example.com",
            "http://10.0.0.5:8009",
            "ftp://x",
            "not a url",
        ] {
            assert!(check_transport(bad).is_err(), "{bad}");
        }
    }
}
