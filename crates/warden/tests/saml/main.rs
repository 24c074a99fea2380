//! SAML single sign-on against a real identity provider (Keycloak, started by
//! scripts/test.sh): console and `warden login --saml` logins whose groups reach a
//! PostgreSQL connection, every refusal the specifications and the known attacks call
//! for (each with its audit reason), the answers signed or encrypted every way Keycloak
//! can, IdP-initiated login off and on, and the SP metadata.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

#[path = "../common/mod.rs"]
mod common;
mod keycloak;

use common::*;
use keycloak::{Answer, Keycloak, log_in};
use serde_json::{Value, json};
use std::io::{BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

const SP: &str = "urn:warden:test:sp";
const PG_PASSWORD: &str = "scram-pw-1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway that is SAML service provider `entity`, trusting the realm by its
/// metadata URL as IdP `keycloak`; `extra` adds settings to that IdP, then more IdPs.
fn saml_gateway(dir: &Path, kc: &Keycloak, entity: &str, extra: &str) -> Running {
    saml_gateway_with(dir, kc, entity, extra, &[])
}

/// [`saml_gateway`] with more environment (settings of `[auth.saml]`).
fn saml_gateway_with(
    dir: &Path,
    kc: &Keycloak,
    entity: &str,
    extra: &str,
    envs: &[(&str, &str)],
) -> Running {
    let port = free_port();
    let config = format!(
        "[auth.saml]\nentity_id = \"{entity}\"\nacs_url = \"http://127.0.0.1:{port}/auth/saml/acs\"\n\
         signing_key_file = \"{key}\"\nsigning_cert_file = \"{cert}\"\ndecryption_key_file = \"{key}\"\n\
         session_ttl_secs = 600\n\
         [[auth.saml.idps]]\nname = \"keycloak\"\nentity_id = \"{idp}\"\nmetadata_url = \"{md}\"\n{extra}",
        key = kc.sp_key.display(),
        cert = kc.sp_cert.display(),
        idp = kc.idp_entity,
        md = kc.metadata_url,
    );
    std::fs::write(dir.join("warden.toml"), config).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec![
        ("WARDEN_CONFIG", "warden.toml"),
        ("WARDEN_API__LISTEN", &listen),
    ];
    all.extend_from_slice(envs);
    start_gateway_with(dir, &all)
}

/// Starts a console login at IdP `idp` of `gw`; the SSO URL, seen as realm client
/// `client` when given (and with another ACS URL when `acs` is given).
async fn start(browser: &mut Browser, gw: &str, idp: &str) -> String {
    let (status, location) = browser
        .step(&format!("{gw}/auth/saml/login?idp={idp}"))
        .await;
    assert_eq!(status, 303, "{location:?}");
    let location = location.unwrap();
    assert!(location.contains("SAMLRequest="), "{location}");
    location
}

/// A fresh answer from Keycloak to a console login of `gw` at `idp`, as `client`.
async fn fresh(
    kc: &Keycloak,
    gw: &str,
    idp: &str,
    client: Option<&str>,
    acs: Option<&str>,
) -> Answer {
    fresh_in(&mut Browser::new(), kc, gw, idp, client, acs).await
}

/// [`fresh`], in `browser` (which holds the login's cookie, to finish it).
async fn fresh_in(
    browser: &mut Browser,
    kc: &Keycloak,
    gw: &str,
    idp: &str,
    client: Option<&str>,
    acs: Option<&str>,
) -> Answer {
    let url = start(browser, gw, idp).await;
    let url = match client {
        Some(c) => kc.as_client(&url, c, acs),
        None if acs.is_some() => kc.as_client(&url, SP, acs),
        None => url,
    };
    log_in(browser, &url, "alice", "alice-pw-1").await
}

/// Posts `answer` to `gw`'s ACS as a browser would; status and `Location`.
async fn post(gw: &str, answer: &Answer) -> (u16, String, String) {
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{gw}/auth/saml/acs"))
        .header("origin", "null")
        .form(&answer.form())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, location, resp.text().await.unwrap())
}

/// The refusal code an ACS answer shows: on the console's login page, or its own page.
fn refusal(answer: &(u16, String, String)) -> String {
    if let Some(code) = answer.1.split("error=").nth(1) {
        return code.to_string();
    }
    answer
        .2
        .split("refused (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or("none")
        .to_string()
}

/// Follows a console login that the ACS accepted to its end; the session's identity.
async fn finish_console(gw: &str, browser: &mut Browser, answer: &Answer) -> Value {
    let (end, _) = browser
        .go_to(&format!("{gw}/auth/saml/acs"), Some(answer.form()))
        .await;
    assert_eq!(end, format!("{gw}/"), "{:?}", browser.visited);
    let session: Value =
        serde_json::from_str(&browser.go(&format!("{gw}/auth/session"), None).await).unwrap();
    assert_eq!(session["logged_in"], true, "{session}");
    session["identity"].clone()
}

fn audit(gw: &str, admin: &str, kind: &str) -> Vec<Value> {
    let (status, page) = call(
        gw,
        admin,
        "GET",
        &format!("/api/audit?kind={kind}&limit=1000"),
        None,
    );
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

/// Waits until an `auth.failure` with `code` is in the audit log (failures are
/// recorded in the background).
fn audited_failure(gw: &str, admin: &str, code: &str) -> Value {
    for _ in 0..200 {
        if let Some(e) = audit(gw, admin, "auth.failure")
            .into_iter()
            .find(|e| e["event"]["payload"]["code"] == code)
        {
            return e["event"].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no auth.failure `{code}` in the audit log");
}

fn psql(pg: &str, token: &str) -> std::process::Output {
    let (host, port) = pg.rsplit_once(':').unwrap();
    run(Command::new("psql")
        .args([
            "-X",
            &format!("host={host} port={port} dbname=billing user=me"),
            "-Atc",
            "SELECT 'through warden'",
        ])
        .env("PGPASSWORD", token))
}

#[test]
fn console_and_cli_logins_through_keycloak_carry_groups_to_postgres() {
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let gw = saml_gateway(dir.path(), &kc, SP, "");
    let admin = gw.printed_key.clone().unwrap();
    let url = gw.url.clone();
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "billing", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": PG_PASSWORD, "allowed_groups": ["dba"],
                "tls": {"mode": "disable"}}),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The console: off to Keycloak, back through the ACS and the finish page, with a
    // session whose groups are the assertion's.
    let (session, listed) = rt.block_on(async {
        let mut browser = Browser::new();
        let login: Value =
            serde_json::from_str(&browser.go(&format!("{url}/auth/session"), None).await).unwrap();
        let sso = start(&mut browser, &url, "keycloak").await;
        let answer = log_in(&mut browser, &sso, "alice", "alice-pw-1").await;
        assert_eq!(answer.acs, format!("{url}/auth/saml/acs"));
        (
            finish_console(&url, &mut browser, &answer).await,
            login["login"]["saml"].clone(),
        )
    });
    assert_eq!(listed, json!(["keycloak"]));
    assert_eq!(session["subject"], "alice", "{session}");
    assert_eq!(session["groups"], json!(["dba", "dev"]), "{session}");

    // The CLI, as bob (group dev only), then alice (dba).
    let home = dir.path().join("cfg");
    let cli_login = |user: &str, password: &str| -> String {
        let mut child = warden(dir.path())
            .env("XDG_CONFIG_HOME", &home)
            .args(["login", "--saml", "--no-browser", "--gateway", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        line_after(&mut out, "To log in, open");
        let mut sso = String::new();
        std::io::BufRead::read_line(&mut out, &mut sso).unwrap();
        let sso = sso.trim().to_string();
        assert!(sso.contains("SAMLRequest="), "{sso}");
        rt.block_on(async {
            let mut browser = Browser::new();
            let answer = log_in(&mut browser, &sso, user, password).await;
            let (end, page) = browser.go_to(&answer.acs, Some(answer.form())).await;
            assert!(
                end.starts_with("http://127.0.0.1:") && end.contains("/callback?code="),
                "{end}"
            );
            assert!(page.contains("You are logged in"), "{page}");
        });
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(child.wait().unwrap().success(), "{rest}\n{err}");
        rest
    };
    let cached_token = || -> String {
        let cache: Value = serde_json::from_str(
            &std::fs::read_to_string(home.join("warden/tokens.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cache["gateways"][&url]["issuer"], "saml:keycloak",
            "{cache}"
        );
        cache["gateways"][&url]["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let said = cli_login("bob", "bob-pw-1");
    assert!(
        said.contains(&format!("logged in to {url} as bob (groups: dev)")),
        "{said}"
    );
    let bob = cached_token();
    let who =
        run(warden(dir.path())
            .env("XDG_CONFIG_HOME", &home)
            .args(["whoami", "--gateway", &url]));
    assert!(
        text(&who.stdout).contains("subject  bob"),
        "{}",
        text(&who.stderr)
    );
    let refused = psql(&gw.listener("PostgreSQL"), &bob);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("no PostgreSQL connection `billing` that you may use"),
        "{}",
        text(&refused.stderr)
    );

    let said = cli_login("alice", "alice-pw-1");
    assert!(said.contains("as alice (groups: dba, dev)"), "{said}");
    let alice = cached_token();
    let allowed = psql(&gw.listener("PostgreSQL"), &alice);
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    assert_eq!(text(&allowed.stdout).trim(), "through warden");

    // Every login is audited with the IdP and the assertion's ids; revoking the key
    // a login gave ends it.
    let logins = audit(&url, &admin, "auth.login");
    let saml: Vec<&Value> = logins
        .iter()
        .map(|e| &e["event"])
        .filter(|e| e["payload"]["method"] == "saml")
        .collect();
    assert_eq!(saml.len(), 3, "{logins:?}");
    for e in &saml {
        assert_eq!(e["payload"]["idp"], "keycloak", "{e}");
        assert!(
            e["payload"]["assertion_id"]
                .as_str()
                .is_some_and(|a| !a.is_empty()),
            "{e}"
        );
        assert!(
            e["payload"]["request_id"]
                .as_str()
                .is_some_and(|a| !a.is_empty()),
            "{e}"
        );
    }
    let key_id = saml[2]["payload"]["key_id"].as_str().unwrap();
    let (status, _) = call(
        &url,
        &admin,
        "DELETE",
        &format!("/api/api-keys/{key_id}"),
        None,
    );
    assert_eq!(status, 204);
    let (status, body) = call(&url, &alice, "GET", "/api/me", None);
    assert_eq!(status, 401, "{body}");

    let log = stop(gw);
    for secret in [&alice, &bob] {
        assert!(
            !log.contains(secret.as_str()),
            "a session token reached the log"
        );
    }
}

#[test]
fn every_refusal_has_its_reason_and_never_logs_anyone_in() {
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A second IdP entry for the same realm, with no clock skew (Keycloak's 1 s
    // assertions are then expired on arrival), and one whose metadata carries another
    // certificate than the realm signs with.
    let evil = dir.path().join("evil");
    std::fs::create_dir(&evil).unwrap();
    let made = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=evil",
        "-keyout",
        evil.join("evil.key").to_str().unwrap(),
        "-out",
        evil.join("evil.crt").to_str().unwrap(),
    ]));
    assert!(made.status.success());
    let evil_b64: String = std::fs::read_to_string(evil.join("evil.crt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let metadata = rt.block_on(kc.metadata());
    let cert_start = metadata.find("X509Certificate>").unwrap() + "X509Certificate>".len();
    let cert_end = cert_start + metadata[cert_start..].find('<').unwrap();
    let swapped = format!(
        "{}{evil_b64}{}",
        &metadata[..cert_start],
        &metadata[cert_end..]
    );
    std::fs::write(evil.join("idp-md.xml"), swapped).unwrap();
    let extra = format!(
        "[[auth.saml.idps]]\nname = \"strict\"\nentity_id = \"{idp}\"\nmetadata_url = \"{md}\"\nclock_skew_secs = 0\n\
         [[auth.saml.idps]]\nname = \"other-cert\"\nentity_id = \"{idp}\"\nmetadata_file = \"{file}\"\n",
        idp = kc.idp_entity,
        md = kc.metadata_url,
        file = evil.join("idp-md.xml").display(),
    );
    let gw = saml_gateway(dir.path(), &kc, SP, &extra);
    let admin = gw.printed_key.clone().unwrap();
    let url = gw.url.clone();

    let mut tried: Vec<(&str, String)> = Vec::new();
    rt.block_on(async {
        let refused = |answer: (u16, String, String)| {
            assert!(
                !answer.1.ends_with("/auth/saml/finish") && !answer.1.contains("finish?h="),
                "{answer:?}"
            );
            refusal(&answer)
        };
        // Signed as the specifications require, or not at all.
        let a = fresh(
            &kc,
            &url,
            "keycloak",
            Some("urn:warden:test:sp-unsigned"),
            None,
        )
        .await;
        tried.push(("unsigned", refused(post(&url, &a).await)));
        let a = fresh(&kc, &url, "keycloak", Some("urn:warden:test:sp-doc"), None).await;
        tried.push(("audience", refused(post(&url, &a).await)));
        let a = fresh(&kc, &url, "keycloak", Some("urn:warden:test:sp-sha1"), None).await;
        tried.push(("algorithm", refused(post(&url, &a).await)));
        let a = fresh(&kc, &url, "strict", Some("urn:warden:test:sp-short"), None).await;
        tried.push(("expired", refused(post(&url, &a).await)));
        let a = fresh(
            &kc,
            &url,
            "keycloak",
            None,
            Some("http://127.0.0.1:9/auth/saml/acs"),
        )
        .await;
        tried.push(("destination", refused(post(&url, &a).await)));
        let a = fresh(&kc, &url, "other-cert", None, None).await;
        tried.push(("cert_mismatch", refused(post(&url, &a).await)));

        // An answer for one login posted as the answer to another.
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        let b = fresh(&kc, &url, "keycloak", None, None).await;
        let crossed = Answer {
            relay_state: b.relay_state.clone(),
            ..a
        };
        tried.push(("in_response_to", refused(post(&url, &crossed).await)));

        // Used twice: the second post is a replay, with its own RelayState or another's.
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        let first = post(&url, &a).await;
        assert!(first.1.starts_with("/auth/saml/finish?h="), "{first:?}");
        tried.push(("replayed", refused(post(&url, &a).await)));
        // No RelayState: no login asked for it, and this IdP takes no unsolicited answers.
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        let bare = Answer {
            relay_state: None,
            ..a
        };
        tried.push(("unsolicited", refused(post(&url, &bare).await)));

        // Tampered after signing.
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        let tampered = a.with_xml(
            &a.xml()
                .replace(">alice</saml:NameID>", ">mallory</saml:NameID>"),
        );
        tried.push(("bad_signature", refused(post(&url, &tampered).await)));

        // Namespace declarations added after signing (exclusive canonicalization drops
        // the ones nothing uses, so the signature still verifies) and named like the
        // attributes a reader looks up: more groups, a later expiry, another login.
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        let more_groups = a.with_xml(&a.xml().replace(
            "<saml:Attribute FriendlyName=\"email\"",
            "<saml:Attribute xmlns:Name=\"groups\" FriendlyName=\"email\"",
        ));
        tried.push(("wrapped", refused(post(&url, &more_groups).await)));
        let a = fresh(&kc, &url, "strict", Some("urn:warden:test:sp-short"), None).await;
        let never_expires = a.with_xml(
            &a.xml()
                .replace(
                    "<saml:Conditions ",
                    "<saml:Conditions xmlns:NotOnOrAfter=\"2099-01-01T00:00:00Z\" ",
                )
                .replace(
                    "<saml:SubjectConfirmationData ",
                    "<saml:SubjectConfirmationData xmlns:NotOnOrAfter=\"2099-01-01T00:00:00Z\" ",
                ),
        );
        tried.push(("wrapped", refused(post(&url, &never_expires).await)));
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        let b = fresh(&kc, &url, "keycloak", None, None).await;
        let b_id = {
            let x = b.xml();
            let at = x.find("InResponseTo=\"").unwrap() + 14;
            x[at..at + x[at..].find('"').unwrap()].to_string()
        };
        let retargeted = Answer {
            relay_state: b.relay_state.clone(),
            ..a.with_xml(
                &a.xml()
                    .replacen(
                        "<samlp:Response ",
                        &format!("<samlp:Response xmlns:InResponseTo=\"{b_id}\" "),
                        1,
                    )
                    .replace(
                        "<saml:SubjectConfirmationData ",
                        &format!("<saml:SubjectConfirmationData xmlns:InResponseTo=\"{b_id}\" "),
                    ),
            )
        };
        tried.push(("wrapped", refused(post(&url, &retargeted).await)));

        // Signature wrapping: an evil copy beside, around or instead of the signed
        // assertion, the original hidden where a lax checker would not look.
        for variant in 0..6 {
            let a = fresh(&kc, &url, "keycloak", None, None).await;
            let xml = a.xml();
            let wrapped = a.with_xml(&wrap(&xml, variant));
            let got = refused(post(&url, &wrapped).await);
            assert!(
                got == "wrapped" || got == "bad_signature",
                "variant {variant}: {got}"
            );
            tried.push(("wrapped", got));
        }

        // Re-signed with a key of the attacker's, carrying its own certificate, then
        // the realm's certificate: either way the configured certificate decides.
        for keep_idp_cert in [false, true] {
            let a = fresh(&kc, &url, "keycloak", None, None).await;
            let resigned = resign(&a.xml(), &evil, keep_idp_cert);
            let got = refused(post(&url, &a.with_xml(&resigned)).await);
            assert!(got == "bad_signature" || got == "cert_mismatch", "{got}");
            tried.push(("bad_signature", got));
        }

        // A comment inside the NameID: "al<!--x-->ice" is alice or nothing, never "al".
        let mut browser = Browser::new();
        let a = fresh_in(&mut browser, &kc, &url, "keycloak", None, None).await;
        let commented = a.with_xml(
            &a.xml()
                .replace(">alice</saml:NameID>", ">al<!--x-->ice</saml:NameID>"),
        );
        let answer = post(&url, &commented).await;
        if let Some(handle) = answer.1.strip_prefix("/auth/saml/finish") {
            let (end, _) = browser
                .go_to(&format!("{url}/auth/saml/finish{handle}"), None)
                .await;
            assert_eq!(end, format!("{url}/"));
            let s: Value =
                serde_json::from_str(&browser.go(&format!("{url}/auth/session"), None).await)
                    .unwrap();
            assert_eq!(s["identity"]["subject"], "alice", "{s}");
        }

        // Not SAML at all.
        let junk = Answer {
            response: "%%%".into(),
            relay_state: None,
            acs: String::new(),
        };
        tried.push(("malformed", refused(post(&url, &junk).await)));
    });
    for (want, got) in &tried {
        if *want != "wrapped" && !(*want == "bad_signature" && got == "cert_mismatch") {
            assert_eq!(got, want, "{tried:?}");
        }
        let event = audited_failure(&url, &admin, got);
        assert_eq!(event["payload"]["method"], "saml", "{event}");
    }
    // No refused answer opened a session or issued a key: the only login is alice's
    // (the commented NameID, when it is read as the signed text says).
    let logins = audit(&url, &admin, "auth.login");
    for e in logins
        .iter()
        .filter(|e| e["event"]["payload"]["method"] == "saml")
    {
        assert_eq!(e["event"]["identity"]["subject"], "alice", "{e}");
    }
    stop(gw);
}

/// Variants of an assertion-signed answer that wrap its signature (the XSW family).
fn wrap(xml: &str, variant: usize) -> String {
    let start = xml.find("<saml:Assertion").unwrap();
    let end = xml.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
    let original = &xml[start..end];
    let sig_start = original.find("<dsig:Signature").unwrap();
    let sig_end = original.find("</dsig:Signature>").unwrap() + "</dsig:Signature>".len();
    let unsigned_evil = format!("{}{}", &original[..sig_start], &original[sig_end..])
        .replace(">alice</saml:NameID>", ">mallory</saml:NameID>");
    let evil_new_id = unsigned_evil.replacen(" ID=\"", " ID=\"evil", 1);
    let signed_evil = original.replace(">alice</saml:NameID>", ">mallory</saml:NameID>");
    let (head, tail) = (&xml[..start], &xml[end..]);
    match variant {
        // The evil copy first, same id, then the original.
        0 => format!("{head}{unsigned_evil}{original}{tail}"),
        // The evil copy with another id first.
        1 => format!("{head}{evil_new_id}{original}{tail}"),
        // The evil copy wraps the original.
        2 => format!(
            "{head}{}{original}</saml:Assertion>{tail}",
            evil_new_id.trim_end_matches("</saml:Assertion>")
        ),
        // The original moved into Extensions.
        3 => format!(
            "{}<samlp:Extensions>{original}</samlp:Extensions>{}{unsigned_evil}{tail}",
            &head[..head.find("<samlp:Status").unwrap()],
            &head[head.find("<samlp:Status").unwrap()..]
        ),
        // The evil copy carries the original's signature (same id).
        4 => format!("{head}{signed_evil}{tail}"),
        // The original inside the evil copy's signature.
        _ => format!(
            "{head}{}{tail}",
            signed_evil.replacen(
                "</dsig:Signature>",
                &format!("<dsig:Object>{original}</dsig:Object></dsig:Signature>"),
                1
            )
        ),
    }
}

/// The answer with NameID mallory, re-signed by `evil/evil.key` with xmlsec1; the
/// KeyInfo then carries the evil certificate, or the realm's when `keep_idp_cert`.
fn resign(xml: &str, evil: &Path, keep_idp_cert: bool) -> String {
    let cert_start = xml.find("<dsig:X509Certificate>").unwrap() + "<dsig:X509Certificate>".len();
    let cert_end = cert_start + xml[cert_start..].find('<').unwrap();
    let idp_cert = xml[cert_start..cert_end].to_string();
    let mut template = xml.replace(">alice</saml:NameID>", ">mallory</saml:NameID>");
    template.replace_range(
        template.find("<dsig:X509Certificate>").unwrap() + 22
            ..template.find("</dsig:X509Certificate>").unwrap(),
        "",
    );
    if let (Some(s), Some(e)) = (
        template.find("<dsig:KeyName>"),
        template.find("</dsig:KeyName>"),
    ) {
        template.replace_range(s..e + "</dsig:KeyName>".len(), "");
    }
    let input = evil.join("in.xml");
    let output = evil.join("out.xml");
    std::fs::write(&input, template).unwrap();
    let _ = std::fs::remove_file(&output);
    let signed = run(Command::new("xmlsec1").args([
        "--sign",
        "--privkey-pem",
        &format!(
            "{},{}",
            evil.join("evil.key").display(),
            evil.join("evil.crt").display()
        ),
        "--id-attr:ID",
        "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
        "--output",
        output.to_str().unwrap(),
        input.to_str().unwrap(),
    ]));
    assert!(signed.status.success(), "xmlsec1: {}", text(&signed.stderr));
    let out = std::fs::read_to_string(&output).unwrap();
    if !keep_idp_cert {
        return out;
    }
    let s = out.find("<dsig:X509Certificate>").unwrap() + 22;
    let e = out.find("</dsig:X509Certificate>").unwrap();
    format!("{}{idp_cert}{}", &out[..s], &out[e..])
}

#[test]
fn answers_signed_on_the_response_on_both_or_encrypted_are_accepted() {
    let kc = Keycloak::from_env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (entity, extra) in [
        ("urn:warden:test:sp-doc", ""),
        ("urn:warden:test:sp-both", ""),
        (
            "urn:warden:test:sp-enc",
            "want_encrypted_assertions = true\n",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gw = saml_gateway(dir.path(), &kc, entity, extra);
        let url = gw.url.clone();
        rt.block_on(async {
            let mut browser = Browser::new();
            let sso = start(&mut browser, &url, "keycloak").await;
            let answer = log_in(&mut browser, &sso, "alice", "alice-pw-1").await;
            let xml = answer.xml();
            if extra.is_empty() {
                assert!(xml.contains("<saml:Assertion"), "{entity}: {xml}");
            } else {
                assert!(
                    xml.contains("EncryptedAssertion") && !xml.contains(">alice<"),
                    "{entity}"
                );
            }
            let identity = finish_console(&url, &mut browser, &answer).await;
            assert_eq!(identity["subject"], "alice", "{entity}: {identity}");
            assert_eq!(identity["groups"], json!(["dba", "dev"]), "{entity}");
            if !extra.is_empty() {
                // A plaintext answer to an IdP that must encrypt is refused.
                let plain = fresh(&kc, &url, "keycloak", Some(SP), None).await;
                assert_eq!(refusal(&post(&url, &plain).await), "not_encrypted");
            }
        });
        stop(gw);
    }
}

#[test]
fn idp_initiated_answers_are_refused_unless_allowed() {
    let kc = Keycloak::from_env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entity = "urn:warden:test:sp-idp-initiated";
    for allowed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let extra = if allowed {
            "allow_idp_initiated = true\n"
        } else {
            ""
        };
        let gw = saml_gateway(dir.path(), &kc, entity, extra);
        let url = gw.url.clone();
        let admin = gw.printed_key.clone().unwrap();
        rt.block_on(async {
            kc.set_idp_initiated_acs(entity, &format!("{url}/auth/saml/acs"))
                .await;
            let mut browser = Browser::new();
            let answer = log_in(
                &mut browser,
                &format!(
                    "{}/realms/warden/protocol/saml/clients/warden-idp-initiated",
                    kc.url
                ),
                "alice",
                "alice-pw-1",
            )
            .await;
            assert_eq!(answer.acs, format!("{url}/auth/saml/acs"));
            if allowed {
                let identity = {
                    let (end, _) = browser.go_to(&answer.acs, Some(answer.form())).await;
                    assert_eq!(end, format!("{url}/"));
                    let s: Value = serde_json::from_str(
                        &browser.go(&format!("{url}/auth/session"), None).await,
                    )
                    .unwrap();
                    s["identity"].clone()
                };
                assert_eq!(identity["subject"], "alice", "{identity}");
            } else {
                assert_eq!(refusal(&post(&url, &answer).await), "unsolicited");
            }
        });
        if !allowed {
            let event = audited_failure(&url, &admin, "unsolicited");
            assert_eq!(event["payload"]["idp"], "keycloak", "{event}");
        }
        stop(gw);
    }
}

#[test]
fn sp_metadata_is_served_and_bad_idp_metadata_stops_the_start() {
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let gw = saml_gateway(dir.path(), &kc, SP, "");
    let url = gw.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (md, idps) = rt.block_on(async {
        let md = reqwest::get(format!("{url}/auth/saml/metadata"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let idps: Value = reqwest::get(format!("{url}/api/auth/saml"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (md, idps)
    });
    assert!(md.contains(&format!("entityID=\"{SP}\"")), "{md}");
    assert!(
        md.contains(&format!("Location=\"{url}/auth/saml/acs\"")),
        "{md}"
    );
    assert!(md.contains("AuthnRequestsSigned=\"true\""), "{md}");
    let cert: String = std::fs::read_to_string(&kc.sp_cert)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(md.replace(['\n', '\r', ' '], "").contains(&cert), "{md}");
    assert_eq!(idps["idps"], json!(["keycloak"]));
    stop(gw);

    // Metadata with no signing certificate: nothing could be checked, so no start.
    let metadata = rt.block_on(kc.metadata());
    let stripped = {
        let s = metadata
            .find("<md:KeyDescriptor")
            .or_else(|| metadata.find("<KeyDescriptor"))
            .unwrap();
        let close = if metadata[s..].starts_with("<md:") {
            "</md:KeyDescriptor>"
        } else {
            "</KeyDescriptor>"
        };
        let e = metadata.rfind(close).unwrap() + close.len();
        format!("{}{}", &metadata[..s], &metadata[e..])
    };
    let file = dir.path().join("no-key.xml");
    std::fs::write(&file, stripped).unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        format!(
            "[api]\npublic_url = \"http://127.0.0.1:1\"\n[auth.saml]\nentity_id = \"{SP}\"\n\
             signing_key_file = \"{key}\"\nsigning_cert_file = \"{cert}\"\n\
             [[auth.saml.idps]]\nname = \"keycloak\"\nentity_id = \"{idp}\"\nmetadata_file = \"{file}\"\n",
            key = kc.sp_key.display(),
            cert = kc.sp_cert.display(),
            idp = kc.idp_entity,
            file = file.display(),
        ),
    )
    .unwrap();
    let out = run(warden(dir.path())
        .env("WARDEN_CONFIG", "bad.toml")
        .arg("gateway"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("names no signing certificate"),
        "{}",
        text(&out.stderr)
    );

    // A key in another form than PKCS#8 is named at start, not at the first login.
    let pkcs1 = dir.path().join("sp-pkcs1.key");
    let converted = run(Command::new("openssl").args([
        "rsa",
        "-traditional",
        "-in",
        kc.sp_key.to_str().unwrap(),
        "-out",
        pkcs1.to_str().unwrap(),
    ]));
    assert!(converted.status.success());
    let out = run(warden(dir.path())
        .env("WARDEN_CONFIG", "bad.toml")
        .env("WARDEN_AUTH__SAML__SIGNING_KEY_FILE", &pkcs1)
        .arg("gateway"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("PKCS#8"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn console_login_through_keycloak_in_chromium() {
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let gw = saml_gateway(dir.path(), &kc, SP, "");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/web/saml.mjs");
    let node = run(Command::new("node").arg(script).env("GW", &gw.url));
    let log = format!("{}{}", text(&node.stdout), text(&node.stderr));
    assert!(node.status.success(), "browser run failed:\n{log}");
    assert!(log.contains("ok - Keycloak logs alice in"), "{log}");
    stop(gw);
}

#[test]
fn an_assertion_encrypted_to_another_key_is_refused() {
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.key");
    let made = run(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        other.to_str().unwrap(),
    ]));
    assert!(made.status.success());
    let gw = saml_gateway_with(
        dir.path(),
        &kc,
        "urn:warden:test:sp-enc",
        "want_encrypted_assertions = true\n",
        &[(
            "WARDEN_AUTH__SAML__DECRYPTION_KEY_FILE",
            other.to_str().unwrap(),
        )],
    );
    let url = gw.url.clone();
    let admin = gw.printed_key.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(async {
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        assert!(a.xml().contains("EncryptedAssertion"));
        refusal(&post(&url, &a).await)
    });
    assert_eq!(got, "decrypt");
    audited_failure(&url, &admin, "decrypt");
    stop(gw);
}

#[test]
fn an_idp_grants_only_its_accepted_groups_under_its_subject_prefix() {
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let gw = saml_gateway(
        dir.path(),
        &kc,
        SP,
        "accept_groups = [\"dev\", \"R&D\"]\nsubject_prefix = \"kc:\"\n",
    );
    let url = gw.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (user, password, groups) in [
        // alice's dba is not this IdP's to grant.
        ("alice", "alice-pw-1", json!(["dev"])),
        // A name with an ampersand (written `R&amp;D`) is read whole.
        ("dana", "dana-pw-1", json!(["R&D"])),
    ] {
        let identity = rt.block_on(async {
            let mut browser = Browser::new();
            let sso = start(&mut browser, &url, "keycloak").await;
            let answer = log_in(&mut browser, &sso, user, password).await;
            finish_console(&url, &mut browser, &answer).await
        });
        assert_eq!(identity["subject"], format!("kc:{user}"), "{identity}");
        assert_eq!(identity["groups"], groups, "{identity}");
    }
    stop(gw);
}

/// The EncryptedData template an attacker fills: AES-256-GCM, the key sent with
/// RSA-OAEP (what an unsigned Response may carry).
const ENCRYPTION_TEMPLATE: &str = "<xenc:EncryptedData xmlns:xenc=\"http://www.w3.org/2001/04/xmlenc#\" \
    Type=\"http://www.w3.org/2001/04/xmlenc#Element\"><xenc:EncryptionMethod \
    Algorithm=\"http://www.w3.org/2009/xmlenc11#aes256-gcm\"/><ds:KeyInfo \
    xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"><xenc:EncryptedKey><xenc:EncryptionMethod \
    Algorithm=\"http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p\"><ds:DigestMethod \
    Algorithm=\"http://www.w3.org/2000/09/xmldsig#sha1\"/></xenc:EncryptionMethod><xenc:CipherData>\
    <xenc:CipherValue/></xenc:CipherData></xenc:EncryptedKey></ds:KeyInfo><xenc:CipherData>\
    <xenc:CipherValue/></xenc:CipherData></xenc:EncryptedData>";

#[test]
fn an_assertion_encrypted_by_anyone_is_checked_again_once_decrypted() {
    // Anyone can encrypt to the certificate in Warden's metadata: a signed plaintext
    // assertion, changed where the signature does not look (a namespace declaration
    // named like an attribute) and encrypted, must be refused as the plaintext is.
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let gw = saml_gateway(dir.path(), &kc, SP, "want_encrypted_assertions = true\n");
    let url = gw.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = dir.path();
    std::fs::write(work.join("template.xml"), ENCRYPTION_TEMPLATE).unwrap();
    let encrypt = |xml: &str| -> String {
        let start = xml.find("<saml:Assertion").unwrap();
        let end = xml.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
        // The assertion on its own needs the prefix its parent declared.
        let assertion = xml[start..end].replacen(
            "<saml:Assertion ",
            "<saml:Assertion xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ",
            1,
        );
        std::fs::write(work.join("assertion.xml"), &assertion).unwrap();
        let out = run(Command::new("xmlsec1").current_dir(work).args([
            "--encrypt",
            "--pubkey-cert-pem",
            kc.sp_cert.to_str().unwrap(),
            "--session-key",
            "aes-256",
            "--xml-data",
            "assertion.xml",
            "--output",
            "encrypted.xml",
            "template.xml",
        ]));
        assert!(out.status.success(), "xmlsec1: {}", text(&out.stderr));
        let data = std::fs::read_to_string(work.join("encrypted.xml")).unwrap();
        let data = data.trim_start_matches("<?xml version=\"1.0\"?>").trim();
        format!(
            "{}<saml:EncryptedAssertion>{data}</saml:EncryptedAssertion>{}",
            &xml[..start],
            &xml[end..]
        )
    };
    let (control, shadowed) = rt.block_on(async {
        // Control: the untouched assertion, encrypted by the attacker, logs in.
        let mut browser = Browser::new();
        let a = fresh_in(&mut browser, &kc, &url, "keycloak", None, None).await;
        let control = post(&url, &a.with_xml(&encrypt(&a.xml()))).await;
        let a = fresh(&kc, &url, "keycloak", None, None).await;
        let evil = a.xml().replace(
            "<saml:Attribute FriendlyName=\"email\"",
            "<saml:Attribute xmlns:Name=\"groups\" FriendlyName=\"email\"",
        );
        (
            control,
            refusal(&post(&url, &a.with_xml(&encrypt(&evil))).await),
        )
    });
    assert!(control.1.starts_with("/auth/saml/finish?h="), "{control:?}");
    assert_eq!(shadowed, "wrapped");
    stop(gw);
}

#[test]
fn a_forged_answer_does_not_cost_its_person_the_login() {
    let kc = Keycloak::from_env();
    let dir = tempfile::tempdir().unwrap();
    let gw = saml_gateway(dir.path(), &kc, SP, "");
    let url = gw.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut browser = Browser::new();
        let answer = fresh_in(&mut browser, &kc, &url, "keycloak", None, None).await;
        let forged = answer.with_xml(
            &answer
                .xml()
                .replace(">alice</saml:NameID>", ">mallory</saml:NameID>"),
        );
        assert_eq!(refusal(&post(&url, &forged).await), "bad_signature");
        // The login is still there for the real answer.
        let identity = finish_console(&url, &mut browser, &answer).await;
        assert_eq!(identity["subject"], "alice");
        // Three refused answers drop a login.
        let answer = fresh(&kc, &url, "keycloak", None, None).await;
        let forged = answer.with_xml(
            &answer
                .xml()
                .replace(">alice</saml:NameID>", ">mallory</saml:NameID>"),
        );
        for _ in 0..3 {
            assert_eq!(refusal(&post(&url, &forged).await), "bad_signature");
        }
        assert_eq!(refusal(&post(&url, &answer).await), "unsolicited");
    });
    stop(gw);
}
