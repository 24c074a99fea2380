//! Driving the real Keycloak scripts/test.sh starts (realm `warden`, see
//! tests/saml/warden-realm.json.in): logging in on its pages, re-signing Warden's
//! AuthnRequest as another of the realm's clients (so that Keycloak answers Warden's
//! own outstanding request with that client's behaviour: another signature placement,
//! encryption, lifetime, audience), and its admin API.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::common::Browser;

pub struct Keycloak {
    pub url: String,
    pub idp_entity: String,
    pub metadata_url: String,
    pub sp_key: PathBuf,
    pub sp_cert: PathBuf,
    admin: (String, String),
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: scripts/test.sh starts Keycloak"))
}

impl Keycloak {
    /// The Keycloak scripts/test.sh started, once its realm answers (it boots while
    /// the tests build).
    pub fn from_env() -> Self {
        let kc = Self {
            url: env("WARDEN_TEST_KEYCLOAK_URL"),
            idp_entity: env("WARDEN_TEST_SAML_IDP_ENTITY_ID"),
            metadata_url: env("WARDEN_TEST_SAML_IDP_METADATA_URL"),
            sp_key: env("WARDEN_TEST_SAML_SP_KEY").into(),
            sp_cert: env("WARDEN_TEST_SAML_SP_CERT").into(),
            admin: (
                env("WARDEN_TEST_KEYCLOAK_ADMIN"),
                env("WARDEN_TEST_KEYCLOAK_ADMIN_PASSWORD"),
            ),
        };
        // One wait for the whole test binary: when Keycloak does not come up, the
        // first test says so after five minutes and the others at once.
        static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let ready = *READY.get_or_init(|| {
            let answers = || {
                std::process::Command::new("curl")
                    .args(["-fsS", "-o", "/dev/null", &kc.metadata_url])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            (0..600).any(|_| {
                answers() || {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    false
                }
            })
        });
        assert!(
            ready,
            "Keycloak's realm did not answer at {}",
            kc.metadata_url
        );
        kc
    }

    /// An admin API call on realm `warden`.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let http = reqwest::Client::new();
        let token: Value = http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.url
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", &self.admin.0),
                ("password", &self.admin.1),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut req = http
            .request(method, format!("{}/admin/realms/warden{path}", self.url))
            .bearer_auth(token["access_token"].as_str().unwrap());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap_or(Value::Null)
    }

    /// Points client `client_id`'s IdP-initiated answers at `acs`.
    pub async fn set_idp_initiated_acs(&self, client_id: &str, acs: &str) {
        let found = self
            .admin(
                reqwest::Method::GET,
                &format!("/clients?clientId={client_id}"),
                None,
            )
            .await;
        let mut client = found[0].clone();
        let id = client["id"].as_str().unwrap().to_string();
        client["attributes"]["saml_assertion_consumer_url_post"] = json!(acs);
        self.admin(
            reqwest::Method::PUT,
            &format!("/clients/{id}"),
            Some(client),
        )
        .await;
    }

    /// The realm's current metadata.
    pub async fn metadata(&self) -> String {
        reqwest::get(&self.metadata_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Warden's AuthnRequest URL (HTTP-Redirect binding) with the request's Issuer
    /// changed to `client` and, when given, its ACS URL to `acs`; re-signed with the SP
    /// key every client of the realm trusts. Request ID and RelayState stay Warden's.
    pub fn as_client(&self, idp_url: &str, client: &str, acs: Option<&str>) -> String {
        let url = reqwest::Url::parse(idp_url).unwrap();
        let param = |k: &str| {
            url.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
        };
        let deflated = STANDARD.decode(param("SAMLRequest").unwrap()).unwrap();
        let mut xml = String::new();
        flate2::read::DeflateDecoder::new(&deflated[..])
            .read_to_string(&mut xml)
            .unwrap();
        let issuer_start = xml.find("Issuer>").unwrap() + "Issuer>".len();
        let issuer_end = issuer_start + xml[issuer_start..].find('<').unwrap();
        xml.replace_range(issuer_start..issuer_end, client);
        if let Some(acs) = acs {
            let start = xml.find("AssertionConsumerServiceURL=\"").unwrap() + 29;
            let end = start + xml[start..].find('"').unwrap();
            xml.replace_range(start..end, acs);
        }
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(xml.as_bytes()).unwrap();
        let request = STANDARD.encode(enc.finish().unwrap());
        let encode =
            |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let mut query = format!("SAMLRequest={}", encode(&request));
        if let Some(rs) = param("RelayState") {
            query.push_str(&format!("&RelayState={}", encode(&rs)));
        }
        query.push_str(&format!(
            "&SigAlg={}",
            encode("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
        ));
        let signature = rsa_sha256(
            &std::fs::read_to_string(&self.sp_key).unwrap(),
            query.as_bytes(),
        );
        query.push_str(&format!(
            "&Signature={}",
            encode(&STANDARD.encode(signature))
        ));
        let mut out = url.clone();
        out.set_query(Some(&query));
        out.to_string()
    }
}

fn rsa_sha256(pem: &str, message: &[u8]) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).unwrap();
    let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        message,
        &mut sig,
    )
    .unwrap();
    sig
}

/// A form of an HTML page: its action and fields (tag and attribute names in any case,
/// as Keycloak writes its auto-submit form in capitals).
pub struct Form {
    pub action: String,
    pub fields: Vec<(String, String)>,
}

impl Form {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn unescape(v: &str) -> String {
    v.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#x3d;", "=")
        .replace("&#61;", "=")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

fn attr(tag: &str, lower: &str, name: &str) -> Option<String> {
    let at = lower.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(unescape(tag[at..].split('"').next()?))
}

pub fn forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    for (start, _) in lower.match_indices("<form") {
        let end = lower[start..]
            .find("</form")
            .map_or(html.len(), |e| start + e);
        let tag_end = start + lower[start..].find('>').unwrap_or(0);
        let mut form = Form {
            action: attr(&html[start..tag_end], &lower[start..tag_end], "action")
                .unwrap_or_default(),
            fields: Vec::new(),
        };
        for (i, _) in lower[start..end].match_indices("<input") {
            let s = start + i;
            let e = s + lower[s..].find('>').unwrap_or(0);
            if let Some(name) = attr(&html[s..e], &lower[s..e], "name") {
                let value = attr(&html[s..e], &lower[s..e], "value").unwrap_or_default();
                form.fields.push((name, value));
            }
        }
        out.push(form);
    }
    out
}

/// What Keycloak's auto-submitting page would post to the ACS.
pub struct Answer {
    pub acs: String,
    pub response: String,
    pub relay_state: Option<String>,
}

impl Answer {
    pub fn xml(&self) -> String {
        String::from_utf8(STANDARD.decode(&self.response).unwrap()).unwrap()
    }

    /// The same answer with its XML replaced.
    pub fn with_xml(&self, xml: &str) -> Answer {
        Answer {
            acs: self.acs.clone(),
            response: STANDARD.encode(xml),
            relay_state: self.relay_state.clone(),
        }
    }

    pub fn form(&self) -> Vec<(String, String)> {
        let mut f = vec![("SAMLResponse".to_string(), self.response.clone())];
        if let Some(r) = &self.relay_state {
            f.push(("RelayState".into(), r.clone()));
        }
        f
    }
}

/// Opens `url` (an SSO URL) in `browser`, logs in as `user` if Keycloak asks, and
/// returns the answer its page would post.
pub async fn log_in(browser: &mut Browser, url: &str, user: &str, password: &str) -> Answer {
    let mut page = browser.go(url, None).await;
    if let Some(login) = forms(&page)
        .into_iter()
        .find(|f| f.field("username").is_some())
    {
        page = browser
            .go(
                &login.action,
                Some(vec![
                    ("username".into(), user.into()),
                    ("password".into(), password.into()),
                    ("credentialId".into(), String::new()),
                ]),
            )
            .await;
    }
    let post = forms(&page)
        .into_iter()
        .find(|f| f.field("SAMLResponse").is_some())
        .unwrap_or_else(|| panic!("Keycloak gave no SAMLResponse form:\n{page}"));
    Answer {
        response: post.field("SAMLResponse").unwrap().to_string(),
        relay_state: post.field("RelayState").map(String::from),
        acs: post.action,
    }
}
