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

/// Makes sure an admin key exists. Returns a generated token, which the caller shows
/// once; a configured `admin_token` is stored (as a hash) and never shown.
pub async fn ensure_admin_key(
    store: &Store,
    config: &Config,
) -> Result<Option<Secret<String>>, GatewayError> {
    let existing = store.api_key(ADMIN_KEY_ID).await?;
    if let Some(token) = &config.admin_token {
        let hash = api_key::hash_token(token.expose());
        match existing {
            Some(rec) if rec.secret_hash == hash && rec.revoked_at.is_none() => {}
            Some(_) => {
                let event = Event::new(
                    "api_key.bootstrap",
                    json!({"key_id": ADMIN_KEY_ID, "source": "config", "replaced": true}),
                );
                store
                    .replace_api_key_secret(ADMIN_KEY_ID, &hash, &event)
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
    if existing.is_some() {
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

async fn insert_admin(
    store: &Store,
    config: &Config,
    issued: &api_key::IssuedKey,
    source: &str,
) -> Result<(), GatewayError> {
    let record = api_key::record(
        issued,
        "bootstrap admin",
        "admin",
        config.admin_groups.clone(),
        source,
        None,
    );
    let event = Event::new(
        "api_key.bootstrap",
        json!({"key_id": ADMIN_KEY_ID, "source": source}),
    );
    store.insert_api_key(&record, &event).await?;
    Ok(())
}
