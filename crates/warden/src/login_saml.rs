//! `warden login --saml [IDP]`: a login through one of the gateway's SAML identity
//! providers. The gateway is the SAML service provider; the CLI only waits on a
//! loopback port (RFC 8252) for the gateway to send the browser back with a one-time
//! code, and redeems it with the PKCE verifier (RFC 7636) only it holds. The token it
//! gets is a short-lived Warden key, cached like any other login.

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::login::{self, CachedLogin};

/// `warden login --saml [IDP]`.
pub async fn login(gateway: &str, idp: Option<&str>, open_browser: bool) -> Result<()> {
    let gateway = login::gateway_key(gateway);
    login::check_transport(&gateway)?;
    let http = login::http()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on the loopback interface for the login's redirect")?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let state = login::random_url_safe(16)?;
    let verifier = login::random_url_safe(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let started = post(
        &http,
        &format!("{gateway}/api/auth/saml/cli-start"),
        &json!({"idp": idp, "redirect": redirect, "state": state, "code_challenge": challenge}),
    )
    .await
    .context("the SAML login could not start")?;
    let url = started["url"]
        .as_str()
        .ok_or_else(|| anyhow!("the gateway sent no login page"))?;
    // Only a web page is opened: https, or http on this machine.
    login::check_transport(url)
        .map_err(|_| anyhow!("the gateway sent a login page that is not an https:// address"))?;
    println!("To log in, open this page in your browser:\n{url}");
    if open_browser {
        let _ = std::process::Command::new("xdg-open")
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let code = tokio::time::timeout(login::LOGIN_TIMEOUT, login::callback(&listener, &state))
        .await
        .map_err(|_| anyhow!("no login within {} s", login::LOGIN_TIMEOUT.as_secs()))??;
    let answer = post(
        &http,
        &format!("{gateway}/api/auth/saml/token"),
        &json!({"code": code, "code_verifier": verifier}),
    )
    .await
    .context("the login's code could not be redeemed")?;
    let token = answer["token"]
        .as_str()
        .ok_or_else(|| anyhow!("the gateway sent no token"))?
        .to_string();
    let expires_at = answer["expires_at"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or_else(|| login::now() + 300, |t| t.unix_timestamp());
    let me = login::whoami_with(&http, &gateway, &token).await?;
    let cached = CachedLogin {
        access_token: token,
        refresh_token: None,
        expires_at,
        issuer: format!("saml:{}", answer["idp"].as_str().unwrap_or("?")),
        client_id: String::new(),
        token_endpoint: String::new(),
        resource: None,
    };
    let mut file = login::load()?;
    file.gateways.insert(gateway.clone(), cached);
    login::save(&file)?;
    println!(
        "logged in to {gateway} as {} (groups: {})",
        me["subject"].as_str().unwrap_or("?"),
        login::groups_of(&me)
    );
    Ok(())
}

/// POSTs JSON to the gateway; an API error comes back as its message.
async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {url}"))?;
    login::gateway_answer(resp)
        .await
        .map_err(|(code, message)| anyhow!("{message} ({code})"))
}
