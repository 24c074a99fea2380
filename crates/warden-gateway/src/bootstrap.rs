//! First-start work: the data directory, the master key, the store, the admin key.

use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use warden_core::{Event, Secret};
use warden_store::{MasterKey, Store, StoreError};

use crate::GatewayError;
use crate::auth::api_key::{self, ADMIN_KEY_ID};
use crate::config::Config;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GatewayError {
    let context = context.into();
    move |source| GatewayError::Io { context, source }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), GatewayError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), GatewayError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))
}

#[cfg(unix)]
fn write_private_file(path: &Path, contents: &str) -> Result<(), GatewayError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, contents: &str) -> Result<(), GatewayError> {
    std::fs::write(path, contents).map_err(io(format!("writing {}", path.display())))
}

/// The master key from config or env, else from its file; the default file is
/// generated (0600) on first start.
pub fn master_key(config: &Config) -> Result<MasterKey, GatewayError> {
    if let Some(k) = &config.secrets.master_key {
        return MasterKey::from_base64(k.expose())
            .map_err(|e| GatewayError::Config(format!("secrets.master_key: {e}")));
    }
    let (path, explicit): (PathBuf, bool) = match &config.secrets.master_key_file {
        Some(p) => (p.clone(), true),
        None => (config.data_dir.join("master.key"), false),
    };
    if path.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(io(format!("reading {}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(GatewayError::Config(format!(
                    "{} is readable by other users (mode {:o}); run `chmod 600` on it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        return MasterKey::from_base64(&text)
            .map_err(|e| GatewayError::Config(format!("{}: {e}", path.display())));
    }
    if explicit {
        return Err(GatewayError::Config(format!(
            "secrets.master_key_file {} does not exist",
            path.display()
        )));
    }
    create_private_dir(&config.data_dir)?;
    let key = MasterKey::generate()?;
    write_private_file(&path, &format!("{}\n", key.to_base64().expose()))?;
    tracing::info!(path = %path.display(), "generated a new master key");
    Ok(key)
}

/// Opens (and migrates) the store, creating the SQLite file's directory if needed.
pub async fn open_store(config: &Config, key: &MasterKey) -> Result<Store, GatewayError> {
    let url = config.store_url();
    if let Some(path) = url.expose().strip_prefix("sqlite://") {
        let file = Path::new(path.split('?').next().unwrap_or(path));
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        if !file.to_string_lossy().starts_with(':') {
            private_store_files(file)?;
        }
    }
    match Store::open(url.expose(), key).await {
        Ok(s) => Ok(s),
        Err(StoreError::WrongMasterKey) => Err(GatewayError::Config(
            "the master key does not match the one this store was created with \
             (was master.key replaced or WARDEN_SECRETS__MASTER_KEY changed?)"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The SQLite store holds sealed secrets, key hashes and the audit chain: its file
/// is created owner-only before SQLite opens it (SQLite gives its `-wal` and `-shm`
/// files the database file's mode), and an existing one and its companions are made
/// owner-only.
fn private_store_files(file: &Path) -> Result<(), GatewayError> {
    let io = |context: String| move |source| GatewayError::Io { context, source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(file)
            .map_err(io(format!("creating {}", file.display())))?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            let path = Path::new(&name);
            if path.exists() {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io(format!("making {} owner-only", path.display())))?;
            }
        }
    }
    Ok(())
}

/// When an admin key stored now expires (`auth.admin_key_ttl_secs`, 0: never).
fn admin_key_expiry(config: &Config) -> Option<time::OffsetDateTime> {
    let ttl = config.auth.admin_key_ttl_secs;
    (ttl > 0).then(|| {
        warden_core::timefmt::now()
            + time::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2))
    })
}

/// Makes sure an admin key exists. Returns a generated token, which the caller shows
/// once; a configured `admin_token` is stored (as a hash) and never shown. Either
/// expires `auth.admin_key_ttl_secs` after it is stored.
pub async fn ensure_admin_key(
    store: &Store,
    config: &Config,
) -> Result<Option<Secret<String>>, GatewayError> {
    let existing = store.api_key(ADMIN_KEY_ID).await?;
    if let Some(token) = &config.admin_token {
        let hash = api_key::hash_token(token.expose());
        match existing {
            Some(rec) if rec.secret_hash == hash && rec.revoked_at.is_none() => {
                add_missing_expiry(store, config, &rec).await?;
            }
            // Revoked, it stays revoked: a restart must not revive a leaked token.
            Some(rec) if rec.secret_hash == hash => {
                tracing::error!(
                    "the configured admin_token was revoked; configure a new one to have an admin key"
                );
            }
            Some(_) => {
                // A new token: whatever the old one registered goes with it (its
                // open sessions end: the watch sees the key's secret change).
                drop_registrations_of_admin_key(store).await?;
                let expires_at = admin_key_expiry(config);
                let event = Event::new(
                    "api_key.bootstrap",
                    json!({"key_id": ADMIN_KEY_ID, "source": "config", "replaced": true,
                           "expires_at": expires_at.map(warden_core::timefmt::rfc3339)}),
                );
                store
                    .replace_api_key_secret(ADMIN_KEY_ID, &hash, expires_at, &event)
                    .await?;
            }
            None => {
                let issued = api_key::IssuedKey {
                    id: ADMIN_KEY_ID.into(),
                    token: token.clone(),
                    secret_hash: hash,
                };
                insert_admin(store, config, &issued, "config").await?;
            }
        }
        return Ok(None);
    }
    if let Some(rec) = existing {
        add_missing_expiry(store, config, &rec).await?;
        return Ok(None);
    }
    let issued =
        api_key::issue(Some(ADMIN_KEY_ID)).map_err(|e| GatewayError::Config(e.to_string()))?;
    // Another gateway sharing the store may have won the race; then it printed the key.
    match insert_admin(store, config, &issued, "generated").await {
        Ok(()) => Ok(Some(issued.token)),
        Err(GatewayError::Store(StoreError::Conflict(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An admin key stored before admin keys expired gets its expiry now.
async fn add_missing_expiry(
    store: &Store,
    config: &Config,
    rec: &warden_store::api_keys::ApiKeyRecord,
) -> Result<(), GatewayError> {
    if rec.expires_at.is_some() || rec.revoked_at.is_some() {
        return Ok(());
    }
    let Some(expires_at) = admin_key_expiry(config) else {
        return Ok(());
    };
    let event = Event::new(
        "api_key.bootstrap",
        json!({"key_id": rec.id, "expiry_added": warden_core::timefmt::rfc3339(expires_at)}),
    );
    store
        .set_api_key_expiry(&rec.id, expires_at, &event)
        .await?;
    Ok(())
}

/// SSH keys registered with the admin key (`api_key_id = admin`) are deleted when
/// its configured token changes, audited one by one.
async fn drop_registrations_of_admin_key(store: &Store) -> Result<(), GatewayError> {
    for key in store.list_ssh_user_keys(None).await? {
        if key.api_key_id.as_deref() != Some(ADMIN_KEY_ID) {
            continue;
        }
        let event = Event::new(
            "ssh_key.delete",
            json!({"fingerprint": key.fingerprint, "owner": key.subject,
                   "reason": "the admin token that registered it was replaced"}),
        );
        store.delete_ssh_user_key(&key.fingerprint, &event).await?;
    }
    Ok(())
}

async fn insert_admin(
    store: &Store,
    config: &Config,
    issued: &api_key::IssuedKey,
    source: &str,
) -> Result<(), GatewayError> {
    let expires_at = admin_key_expiry(config);
    let record = api_key::record(
        issued,
        "bootstrap admin",
        "admin",
        config.admin_groups.clone(),
        source,
        expires_at,
    );
    let event = Event::new(
        "api_key.bootstrap",
        json!({"key_id": ADMIN_KEY_ID, "source": source,
               "expires_at": expires_at.map(warden_core::timefmt::rfc3339)}),
    );
    store.insert_api_key(&record, &event).await?;
    Ok(())
}

/// Writes a generated admin key where only the gateway's user can read it, for a
/// gateway whose standard output is not a terminal (a service manager would keep it
/// in its journal). Returns the file's path.
pub fn write_admin_key_file(
    config: &Config,
    token: &Secret<String>,
) -> Result<PathBuf, GatewayError> {
    create_private_dir(&config.data_dir)?;
    let path = config.data_dir.join("admin.key");
    if path.exists() {
        // An older one nobody collected: it no longer works, the new one does.
        std::fs::remove_file(&path).map_err(io(format!("replacing {}", path.display())))?;
    }
    write_private_file(&path, &format!("{}\n", token.expose()))?;
    Ok(path)
}

/// A new admin key issued offline by `warden admin recover`: it does not depend on
/// the old one, which is revoked (its sessions end). Audited as `api_key.recover`
/// with the operating-system user who ran it.
pub async fn recover_admin_key(
    store: &Store,
    config: &Config,
    operator: &str,
) -> Result<(Secret<String>, Option<time::OffsetDateTime>), GatewayError> {
    if config.admin_token.is_some() {
        return Err(GatewayError::Config(
            "admin_token is set in the configuration: that is the admin key; change it there"
                .into(),
        ));
    }
    let issued =
        api_key::issue_recovered_admin().map_err(|e| GatewayError::Config(e.to_string()))?;
    let expires_at = admin_key_expiry(config);
    let record = api_key::record(
        &issued,
        "recovered admin",
        "admin",
        config.admin_groups.clone(),
        operator,
        expires_at,
    );
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let event = Event::new(
        "api_key.recover",
        json!({"key_id": issued.id, "operator": operator, "host": host,
               "expires_at": expires_at.map(warden_core::timefmt::rfc3339)}),
    );
    store.insert_api_key(&record, &event).await?;
    // Every earlier admin key (bootstrap or recovered) stops working.
    for old in store.list_api_keys().await? {
        if !api_key::is_bootstrap_admin(&old.id) || old.id == issued.id || old.revoked_at.is_some()
        {
            continue;
        }
        let event = Event::new(
            "api_key.revoke",
            json!({"key_id": old.id, "reason": "replaced by `warden admin recover`",
                   "operator": operator, "replaced_by": issued.id}),
        );
        store
            .revoke_api_key(&old.id, warden_core::timefmt::now(), &event)
            .await?;
    }
    Ok((issued.token, expires_at))
}

/// This gateway instance: its id (kept in the data directory, so a restart is the
/// same instance) and whether its previous run died without stopping cleanly.
pub struct Instance {
    pub id: String,
    /// What the previous run's marker said (`pid <n> started <time>`) when it was
    /// never removed: that run was killed or crashed.
    pub unclean_stop: Option<String>,
    marker: PathBuf,
    /// Held while the gateway runs: a second process on the same data directory is
    /// refused instead of taking this one's sessions and journal for a dead run's.
    _lock: std::fs::File,
}

impl Instance {
    /// Reads (or creates) the instance id and sets the running marker.
    pub fn claim(config: &Config) -> Result<Instance, GatewayError> {
        create_private_dir(&config.data_dir)?;
        let lock_path = config.data_dir.join("gateway.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(GatewayError::Config(format!(
                "another gateway is running with the data directory {}: each gateway needs its own",
                config.data_dir.display()
            )));
        }
        let id_file = config.data_dir.join("gateway.id");
        let id = match std::fs::read_to_string(&id_file) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let id = uuid::Uuid::now_v7().to_string();
                let _ = std::fs::remove_file(&id_file);
                write_private_file(&id_file, &format!("{id}\n"))?;
                id
            }
        };
        let marker = config.data_dir.join("gateway.running");
        let unclean_stop = std::fs::read_to_string(&marker)
            .ok()
            .map(|m| m.trim().to_string());
        let _ = std::fs::remove_file(&marker);
        write_private_file(
            &marker,
            &format!(
                "pid {} started {}\n",
                std::process::id(),
                warden_core::timefmt::rfc3339(warden_core::timefmt::now())
            ),
        )?;
        Ok(Instance {
            id,
            unclean_stop,
            marker,
            _lock: lock,
        })
    }

    /// The run ended cleanly: the next start finds no marker.
    pub fn stopped(&self) {
        if let Err(e) = std::fs::remove_file(&self.marker) {
            tracing::warn!(error = %e, "could not remove the running marker");
        }
    }
}

/// `gateway.unclean_stop` (when the previous run died or left sessions open) and a
/// `session.end` for each session it left open.
fn interruption_events(
    instance: &str,
    unclean_stop: Option<String>,
    reason: &str,
    sessions: &[warden_core::Session],
) -> Vec<Event> {
    if unclean_stop.is_none() && sessions.is_empty() {
        return Vec::new();
    }
    let mut events = vec![Event::new(
        "gateway.unclean_stop",
        json!({"instance": instance, "previous_run": unclean_stop,
               "sessions_interrupted": sessions.len()}),
    )];
    for s in sessions {
        let mut event = Event::new(
            "session.end",
            json!({"reason": reason, "status": "interrupted", "bytes_in": s.bytes_in,
                   "bytes_out": s.bytes_out, "started_at": warden_core::timefmt::rfc3339(s.started_at)}),
        )
        .on_connection(&s.connection)
        .in_session(s.id);
        event.identity = Some(warden_core::EventIdentity {
            subject: s.subject.clone(),
            groups: s.groups.clone(),
        });
        events.push(event);
    }
    events
}

/// Closes the sessions a dead run of this instance left open, as `interrupted`, with
/// a `session.end` each, and records the unclean stop (`gateway.unclean_stop`).
pub async fn recover_from_unclean_stop(
    store: &Store,
    instance: &Instance,
) -> Result<(), GatewayError> {
    let reason = "interrupted: the gateway stopped without closing the session (killed or crashed)";
    let unclean_stop = instance.unclean_stop.clone();
    let sessions = store
        .interrupt_sessions(
            &instance.id,
            reason,
            warden_core::timefmt::now(),
            |sessions| interruption_events(&instance.id, unclean_stop, reason, sessions),
        )
        .await?;
    if sessions.is_empty() && instance.unclean_stop.is_none() {
        return Ok(());
    }
    tracing::warn!(
        sessions = sessions.len(),
        "the previous run stopped uncleanly; its open sessions were closed as interrupted"
    );
    Ok(())
}
