//! The Warden gateway: configuration, authentication, the REST API and its listener.
//!
//! [`Gateway::start`] turns a [`Config`] into a running gateway: it opens the store,
//! makes sure an admin key exists, and serves the API. Protocol proxies attach here
//! as their own crates land; this crate holds no wire-protocol code.

pub mod access;
pub mod api;
pub mod auth;
mod bootstrap;
pub mod config;
pub mod events;
mod gate;
pub mod policy;
pub mod recording;
mod server;
pub mod terminal;
pub mod tunnel;

pub use config::Config;

use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warden_core::{Event, Secret};
use warden_store::{AuditJournal, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("API TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Oidc(#[from] auth::oidc::OidcSetupError),
}

/// A running gateway.
pub struct Gateway {
    api_addr: SocketAddr,
    pg_addr: Option<SocketAddr>,
    mysql_addr: Option<SocketAddr>,
    ssh_addr: Option<SocketAddr>,
    tls: bool,
    admin_token: Option<Secret<String>>,
    store: Arc<Store>,
    journal: Arc<AuditJournal>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Gateway {
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let config = Arc::new(config);
        let key = bootstrap::master_key(&config)?;
        let store = Arc::new(bootstrap::open_store(&config, &key).await?);
        // Ships what a previous run left in the journal before anything else happens.
        let journal = AuditJournal::open(
            &config.data_dir.join("audit-journal"),
            store.clone(),
            if config.audit.journal_sync {
                warden_store::JournalSync::Disk
            } else {
                warden_store::JournalSync::Os
            },
        )
        .await?;
        let admin_token = bootstrap::ensure_admin_key(&store, &config).await?;
        let auth = Arc::new(auth::Authenticator::new(&config, store.clone())?);
        let tls = match (&config.api.tls_cert, &config.api.tls_key) {
            (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(config.api.listen)
            .await
            .map_err(|source| GatewayError::Io {
                context: format!("binding the API listener to {}", config.api.listen),
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| GatewayError::Io {
            context: "reading the API listener address".into(),
            source,
        })?;
        store
            .append_audit(&Event::new(
                "gateway.start",
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "store": format!("{:?}", store.backend()).to_lowercase(),
                    "api": api_addr.to_string(),
                    "api_tls": tls.is_some(),
                    "oidc_issuers": config.auth.oidc.iter().map(|o| o.issuer.clone()).collect::<Vec<_>>(),
                }),
            ))
            .await?;
        let policies = Arc::new(policy::PolicyRegistry::new(
            config.policies.clone(),
            store.clone(),
            key.derive("warden masking hash key v1"),
        ));
        let (shutdown, rx) = watch::channel(false);
        let api_url = config.api.public_url.clone().unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{api_addr}")
        });
        let access = Arc::new(access::AccessControl::new(
            store.clone(),
            config.admin_groups.clone(),
            api_url,
        ));
        tokio::spawn(access.clone().run(rx.clone()));
        let delivery = events::Delivery::new(store.clone(), config.events.clone())
            .map_err(GatewayError::Config)?;
        let webhooks_changed = delivery.webhooks_changed.clone();
        tokio::spawn(delivery.run(rx.clone()));
        let gate = Arc::new(
            gate::SessionGate::new(
                store.clone(),
                journal.clone(),
                auth.clone(),
                policies.clone(),
                access.clone(),
                config.recordings_dir(),
                config.recordings.rows_per_result,
            )
            .with_exec_output_limit(config.recordings.exec_output_bytes),
        );
        let (pg_addr, pg_tunnels) = if config.pg.enabled {
            let (addr, proxy) = start_pg_listener(&config, gate.clone(), rx.clone()).await?;
            (Some(addr), Some(proxy))
        } else {
            (None, None)
        };

        let (mysql_addr, mysql_tunnels) = if config.mysql.enabled {
            let (addr, proxy) = start_mysql_listener(&config, gate.clone(), rx.clone()).await?;
            (Some(addr), Some(proxy))
        } else {
            (None, None)
        };
        let (ssh_addr, ssh_tunnels) = if config.ssh.enabled {
            let (addr, proxy) = start_ssh_listener(&config, gate.clone(), rx.clone()).await?;
            (Some(addr), Some(proxy))
        } else {
            (None, None)
        };
        let tunnels = Arc::new(tunnel::TunnelTargets {
            gate: gate.clone(),
            pg: pg_tunnels,
            mysql: mysql_tunnels,
            ssh: ssh_tunnels,
        });
        let app = api::router(api::AppState::new(api::StateInner {
            store: store.clone(),
            journal: journal.clone(),
            auth,
            policies,
            access,
            webhooks_changed,
            tunnels,
            config: config.clone(),
        }));
        let has_tls = tls.is_some();
        let server = tokio::spawn(server::serve(listener, tls, app, rx));
        tracing::info!(api = %api_addr, tls = has_tls, "gateway started");
        Ok(Gateway {
            pg_addr,
            mysql_addr,
            ssh_addr,
            api_addr,
            tls: has_tls,
            admin_token,
            store,
            journal,
            shutdown,
            server,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where the PostgreSQL proxy listens, when enabled.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg_addr
    }

    /// Where the MySQL proxy listens, when enabled.
    pub fn mysql_addr(&self) -> Option<SocketAddr> {
        self.mysql_addr
    }

    /// Where the SSH proxy listens, when enabled.
    pub fn ssh_addr(&self) -> Option<SocketAddr> {
        self.ssh_addr
    }

    /// `http://...` or `https://...` of the API listener.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.api_addr)
    }

    /// The admin token generated at this start, if one was: show it once.
    pub fn take_generated_admin_token(&mut self) -> Option<Secret<String>> {
        self.admin_token.take()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting connections and records the stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        if let Err(e) = self.journal.close().await {
            tracing::error!(error = %e, "the audit journal could not be shipped; it will be at the next start");
        }
        if let Err(e) = self
            .store
            .append_audit(&Event::new("gateway.stop", json!({})))
            .await
        {
            tracing::error!(error = %e, "could not record gateway stop");
        }
        self.store.close().await;
    }
}

/// Opens an existing store for offline tools (`warden audit verify`): never generates
/// a master key, so pointing at the wrong directory fails instead of creating one.
pub async fn open_existing_store(config: &Config) -> Result<Store, GatewayError> {
    let mut config = config.clone();
    if config.secrets.master_key.is_none() && config.secrets.master_key_file.is_none() {
        config.secrets.master_key_file = Some(config.data_dir.join("master.key"));
    }
    if let Some(path) = config.store_url().expose().strip_prefix("sqlite://") {
        let file = path.split('?').next().unwrap_or(path);
        if !std::path::Path::new(file).exists() {
            return Err(GatewayError::Config(format!("no store at {file}")));
        }
    }
    let key = bootstrap::master_key(&config)?;
    bootstrap::open_store(&config, &key).await
}

/// Binds a proxy listener; `what` names it in errors.
async fn bind_listener(
    addr: SocketAddr,
    what: &str,
) -> Result<(TcpListener, SocketAddr), GatewayError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Io {
            context: format!("binding the {what} listener to {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| GatewayError::Io {
        context: format!("reading the {what} listener address"),
        source,
    })?;
    Ok((listener, local))
}

/// A proxy listener's TLS, when it has a certificate: no ALPN (database clients
/// negotiate TLS inside their own protocol).
fn proxy_tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<tokio_rustls::TlsAcceptor>, GatewayError> {
    match (cert, key) {
        (Some(cert), Some(key)) => server::tls_acceptor_with_alpn(cert, key, &[]).map(Some),
        _ => Ok(None),
    }
}

/// Accepts clients until shutdown and serves each on its own task, in a span named
/// after the protocol; a failing accept (out of descriptors) backs off.
fn spawn_accept_loop<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    protocol: &'static str,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::info_span!("session", protocol, client = %peer);
                    tokio::spawn(serve(stream, peer).instrument(span));
                }
                Err(e) => {
                    tracing::warn!(error = %e, protocol, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Binds the PostgreSQL listener and serves each client on its own task.
async fn start_pg_listener(
    config: &Config,
    hooks: Arc<gate::SessionGate>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, warden_pg::proxy::ProxyConfig), GatewayError> {
    let (listener, addr) = bind_listener(config.pg.listen, "PostgreSQL").await?;
    // PostgreSQL clients before 17 send no ALPN; 17+ with sslnegotiation=direct would
    // send "postgresql", which this listener does not take directly.
    let tls = proxy_tls(config.pg.tls_cert.as_deref(), config.pg.tls_key.as_deref())?;
    let proxy_config = warden_pg::proxy::ProxyConfig {
        cancels: warden_pg::proxy::CancelMap::default(),
        allow_plaintext_tokens: config.pg.allow_plaintext_tokens,
        tls,
        max_message: config.pg.max_message_bytes,
        login_timeout: std::time::Duration::from_secs(30),
    };
    let served = proxy_config.clone();
    spawn_accept_loop(listener, shutdown, "postgres", move |stream, peer| {
        warden_pg::proxy::serve_client(stream, peer, hooks.clone(), served.clone())
    });
    tracing::info!(pg = %addr, "PostgreSQL proxy listening");
    Ok((addr, proxy_config))
}

/// Binds the MySQL listener and serves each client on its own task.
async fn start_mysql_listener(
    config: &Config,
    hooks: Arc<gate::SessionGate>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, warden_mysql::proxy::ProxyConfig), GatewayError> {
    let (listener, addr) = bind_listener(config.mysql.listen, "MySQL").await?;
    let tls = proxy_tls(
        config.mysql.tls_cert.as_deref(),
        config.mysql.tls_key.as_deref(),
    )?;
    let proxy_config = warden_mysql::proxy::ProxyConfig {
        allow_plaintext_tokens: config.mysql.allow_plaintext_tokens,
        tls,
        max_packet: config.mysql.max_packet_bytes,
        login_timeout: std::time::Duration::from_secs(config.mysql.login_timeout_secs),
        allow_local_infile: config.mysql.allow_local_infile,
        server_version: config.mysql.server_version.clone(),
        threads: warden_mysql::proxy::ThreadMap::default(),
    };
    let served = proxy_config.clone();
    spawn_accept_loop(listener, shutdown, "mysql", move |stream, peer| {
        warden_mysql::proxy::serve_client(stream, peer, hooks.clone(), served.clone())
    });
    tracing::info!(mysql = %addr, "MySQL proxy listening");
    Ok((addr, proxy_config))
}

/// Binds the SSH listener (creating the host key on first start) and serves each
/// client on its own task.
async fn start_ssh_listener(
    config: &Config,
    hooks: Arc<gate::SessionGate>,
    shutdown: watch::Receiver<bool>,
) -> Result<
    (
        SocketAddr,
        Arc<warden_ssh::proxy::SshProxy<gate::SessionGate>>,
    ),
    GatewayError,
> {
    let key_path = config.ssh_host_key_path();
    let host_key = warden_ssh::keys::load_or_create_host_key(&key_path)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let (listener, addr) = bind_listener(config.ssh.listen, "SSH").await?;
    let proxy = Arc::new(warden_ssh::proxy::SshProxy::new(
        hooks,
        warden_ssh::proxy::ProxyConfig {
            host_key,
            login_timeout: std::time::Duration::from_secs(config.ssh.login_timeout_secs),
            max_channels: config.ssh.max_channels,
            auth_timeout: std::time::Duration::from_secs(config.ssh.auth_timeout_secs),
        },
    ));
    let served = proxy.clone();
    spawn_accept_loop(listener, shutdown, "ssh", move |stream, peer| {
        let proxy = served.clone();
        async move { proxy.serve(stream, peer).await }
    });
    tracing::info!(ssh = %addr, "SSH proxy listening");
    Ok((addr, proxy))
}
