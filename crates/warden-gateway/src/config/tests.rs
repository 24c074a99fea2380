//! The configuration's tests: defaults, files, environment overrides, validation.

use super::*;

fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let path = dir.path().join("warden.toml");
    std::fs::write(&path, text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    Config::load(
        Some(&path),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn empty_config_is_the_embedded_default() {
    let c = Config::load(None, Vec::new()).map_err(|e| e.to_string());
    let c = c.unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8009");
    assert_eq!(c.store_url().expose(), "sqlite://./warden-data/warden.db");
}

#[test]
fn unknown_field_names_field_and_line() {
    let err = load_str("data_dir = \"/x\"\n\n[api]\nlisen = \"1.2.3.4:1\"\n", &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("lisen"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn wrong_type_names_field_and_line() {
    let err = load_str("[api]\nmax_body_bytes = \"big\"\n", &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("line 2") && err.contains("max_body_bytes") || err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn every_section_can_be_overridden_from_the_environment() {
    let table = toml::Table::try_from(Config::default()).unwrap();
    for key in table.keys() {
        assert!(
            TOP_LEVEL_KEYS.contains(&key.as_str()),
            "`{key}` is not in TOP_LEVEL_KEYS"
        );
    }
}

#[test]
fn env_overrides_nested_and_ignores_unrelated() {
    let c = load_str(
        "[api]\nlisten = \"127.0.0.1:1\"\n",
        &[
            ("WARDEN_API__LISTEN", "127.0.0.1:9999"),
            ("WARDEN_API__MAX_BODY_BYTES", "2048"),
            ("WARDEN_ADMIN_TOKEN", "an-admin-token-of-enough-length"),
            ("WARDEN_TOKEN", "belongs-to-the-cli"),
            ("HOME", "/root"),
        ],
    )
    .map_err(|e| e.to_string());
    let c = c.unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:9999");
    assert_eq!(c.api.max_body_bytes, 2048);
    assert_eq!(
        c.admin_token.as_ref().map(|t| t.expose().as_str()),
        Some("an-admin-token-of-enough-length")
    );
}

#[test]
fn bad_env_override_names_the_variable() {
    let err = load_str("", &[("WARDEN_API__LISTEN", "not-an-address")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("WARDEN_API__LISTEN"), "{err}");
}

#[test]
fn print_config_redacts_secrets() {
    let c = load_str(
        "admin_token = \"super-secret-admin-token-123\"\n[store]\nurl = \"postgres://w:dbpass99@db/w\"\n[secrets]\nmaster_key = \"bWFzdGVyLWtleS1tYXN0ZXIta2V5LW1hc3Rlci1rZXkh\"\n",
        &[],
    )
    .map_err(|e| e.to_string());
    let text = c.unwrap_or_else(|e| unreachable!("{e}")).to_redacted_toml();
    let c = load_str(
        "[[auth.oidc]]\nissuer = \"https://idp.example.com\"\naudiences = [\"w\"]\n\
         [web.oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"console\"\n\
         client_secret = \"console-client-secret-9\"\n",
        &[],
    );
    let web = c
        .map(|c| c.to_redacted_toml())
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert!(!web.contains("console-client-secret-9"), "{web}");
    for secret in ["super-secret-admin-token-123", "dbpass99", "bWFzdGVy"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("<redacted>"));
    assert!(text.contains("postgres://w:<redacted>@db/w"), "{text}");
}

#[test]
fn policy_sets_are_validated_at_load() {
    let ok = load_str(
        "[[policies.guardrails]]\nname = \"g\"\n[[policies.guardrails.rules]]\nname = \"r\"\nsql_statements = [\"drop\"]\n",
        &[],
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    for (cfg, needle) in [
        (
            "[[policies.guardrails]]\nname = \"g\"\n[[policies.guardrails.rules]]\nname = \"r\"\n",
            "exactly one matcher",
        ),
        (
            "[[policies.masking]]\nname = \"m\"\ndetectors = [\"emial\"]\n",
            "emial",
        ),
        (
            "[[policies.masking]]\nname = \"m\"\ncustom = [{ name = \"x\", regex = \"(\" }]\n",
            "custom detector",
        ),
        (
            "[[policies.guardrails]]\nname = \"g\"\nrules = []\n[[policies.guardrails]]\nname = \"g\"\nrules = []\n",
            "twice",
        ),
    ] {
        let err = load_str(cfg, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(needle), "{cfg}: {err}");
    }
}

#[test]
fn rejects_weak_or_unsafe_settings() {
    for (cfg, needle) in [
        ("admin_token = \"short\"\n", "admin_token"),
        ("[api]\ntls_cert = \"/c.pem\"\n", "tls_key"),
        ("[store]\nurl = \"mysql://x\"\n", "store.url"),
        (
            "[[auth.oidc]]\nissuer = \"http://idp.example.com\"\naudiences = [\"w\"]\n",
            "https",
        ),
        (
            "[[auth.oidc]]\nissuer = \"https://idp.example.com\"\naudiences = [\"w\"]\nalgorithms = [\"HS256\"]\n",
            "HS256",
        ),
        (
            "[[auth.oidc]]\nissuer = \"https://idp.example.com\"\naudiences = []\n",
            "audiences",
        ),
        (
            "[web.oidc]\nissuer = \"https://other.example.com\"\nclient_id = \"c\"\n",
            "web.oidc.issuer",
        ),
        ("[web]\nsession_idle_secs = 0\n", "web.session_idle_secs"),
    ] {
        let err = load_str(cfg, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(needle), "{cfg}: {err}");
    }
}

#[test]
fn the_gateways_ssh_host_key_file_has_its_own_name_and_the_old_one_still_reads() {
    let c = load_str("[ssh]\nhost_key_file = \"/etc/warden/ssh_key\"\n", &[]).unwrap();
    assert_eq!(
        c.ssh_host_key_path(),
        std::path::Path::new("/etc/warden/ssh_key")
    );
    let c = load_str("[ssh]\nhost_key = \"/etc/warden/old_key\"\n", &[]).unwrap();
    assert_eq!(
        c.ssh_host_key_path(),
        std::path::Path::new("/etc/warden/old_key")
    );
    let c = load_str("", &[("WARDEN_SSH__HOST_KEY_FILE", "/k")]).unwrap();
    assert_eq!(c.ssh_host_key_path(), std::path::Path::new("/k"));
}
