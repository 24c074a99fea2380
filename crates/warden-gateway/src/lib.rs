//! The Warden gateway: configuration, authentication, the REST API and its listener.
//!
//! [`Gateway::start`] turns a [`Config`] into a running gateway: it opens the store,
//! makes sure an admin key exists, and serves the API. Protocol proxies attach here
//! as their own crates land; this crate holds no wire-protocol code.

pub mod access;
pub mod agents;
pub mod api;
pub mod auth;
mod bootstrap;
pub mod config;
pub mod events;
mod gate;
pub mod idle;
pub mod policy;
pub mod recording;
mod repeats;
pub mod retention;
mod server;
pub mod session_watch;
pub mod terminal;
pub mod tunnel;
pub mod web;

pub use bootstrap::{recover_admin_key, write_admin_key_file};
pub use config::Config;

use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warden_core::{ConnectionKind, Event, Secret};
use warden_net::Registration;
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
    /// Where each protocol with a listener listens.
    listeners: HashMap<ConnectionKind, SocketAddr>,
    tls: bool,
    admin_token: Option<Secret<String>>,
    store: Arc<Store>,
    journal: Arc<AuditJournal>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    instance: bootstrap::Instance,
    repeats: Arc<repeats::RepeatLog>,
    agents: Arc<warden_agent::AgentHub>,
}

impl Gateway {
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let config = Arc::new(config);
        let key = bootstrap::master_key(&config)?;
        let store = Arc::new(bootstrap::open_store(&config, &key).await?);
        let instance = bootstrap::Instance::claim(&config)?;
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
        bootstrap::recover_from_unclean_stop(&store, &instance).await?;
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
                    "instance": instance.id,
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
        let watch = Arc::new(session_watch::SessionWatch::new(
            store.clone(),
            journal.clone(),
        ));
        tokio::spawn(watch.clone().run(rx.clone()));
        tokio::spawn(retention::Retention::new(store.clone(), &config).run(rx.clone()));
        tokio::spawn(idle::release_when_idle(
            store.clone(),
            journal.clone(),
            rx.clone(),
        ));
        let repeats = repeats::RepeatLog::new(journal.clone());
        tokio::spawn(repeats.clone().run(rx.clone()));
        let access = Arc::new(access::AccessControl::new(
            store.clone(),
            config.admin_groups.clone(),
            api_url,
            watch.clone(),
        ));
        tokio::spawn(access.clone().run(rx.clone()));
        let delivery = events::Delivery::new(store.clone(), config.events.clone())
            .map_err(GatewayError::Config)?;
        let webhooks_changed = delivery.webhooks_changed.clone();
        tokio::spawn(delivery.run(rx.clone()));
        let agent_hub = Arc::new(warden_agent::AgentHub::new(
            Arc::new(agents::AuditedHub {
                journal: journal.clone(),
                store: store.clone(),
            }),
            std::time::Duration::from_secs(config.agents.dial_wait_secs),
            std::time::Duration::from_secs(config.backends.connect_timeout_secs),
        ));
        tokio::spawn(agents::keep_in_step(
            agent_hub.clone(),
            store.clone(),
            rx.clone(),
        ));
        let gate = Arc::new(
            gate::SessionGate::new(
                store.clone(),
                journal.clone(),
                auth.clone(),
                policies.clone(),
                gate::Oversight {
                    access: access.clone(),
                    watch: watch.clone(),
                    repeats: repeats.clone(),
                },
                gate::Recordings {
                    dir: config.recordings_dir(),
                    rows_per_result: config.recordings.rows_per_result,
                    writer: recording::RecordingWriter::start().map_err(|source| {
                        GatewayError::Io {
                            context: "starting the recording writer".into(),
                            source,
                        }
                    })?,
                },
                gate::Routes {
                    direct: Arc::new(warden_net::TcpDialer {
                        connect_timeout: std::time::Duration::from_secs(
                            config.backends.connect_timeout_secs,
                        ),
                    }),
                    agents: agent_hub.clone(),
                },
            )
            .with_exec_output_limit(config.recordings.exec_output_bytes)
            .with_instance(&instance.id),
        );
        let budget = descriptor_budget();
        let mut listeners = HashMap::new();
        let mut proxies = HashMap::new();
        let mut endpoints = Vec::new();
        let door = || Door {
            gate: warden_net::ConnectionGate::new(
                warden_net::ConnectionLimits {
                    max_per_listener: config.connections.max_per_listener,
                    max_per_client: config.connections.max_per_client,
                },
                budget.clone(),
            ),
            repeats: repeats.clone(),
        };
        for registration in protocols(&config, &gate)? {
            let Registration {
                kind,
                listen,
                encrypted,
                proxy,
            } = registration;
            if let Some(addr) = listen {
                let door = door();
                let addr = start_listener(kind, addr, proxy.clone(), door, rx.clone()).await?;
                listeners.insert(kind, addr);
                endpoints.push(web::Endpoint {
                    kind: kind.as_str(),
                    port: addr.port(),
                    tls: encrypted,
                });
            }
            proxies.insert(kind, proxy);
        }
        let tunnels = Arc::new(tunnel::TunnelTargets { proxies });
        let app = api::router(api::AppState::new(api::StateInner {
            store: store.clone(),
            journal: journal.clone(),
            auth,
            policies,
            access,
            watch,
            repeats: repeats.clone(),
            webhooks_changed,
            tunnels,
            agents: agent_hub.clone(),
            web: Arc::new(
                // Browsers reach the console over HTTPS when the listener has TLS or
                // a TLS proxy in front of it is the public address.
                web::WebConsole::new(
                    &config.web,
                    tls.is_some()
                        || config
                            .api
                            .public_url
                            .as_deref()
                            .and_then(|u| u.get(..8))
                            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://")),
                    endpoints,
                )
                .map_err(GatewayError::Config)?,
            ),
            saml: config
                .auth
                .saml
                .as_ref()
                .map(|c| auth::saml::SamlService::new(c, config.api.public_url.as_deref()))
                .transpose()
                .map_err(|e| GatewayError::Config(e.to_string()))?
                .map(Arc::new),
            config: config.clone(),
        }));
        let has_tls = tls.is_some();
        let server = tokio::spawn(server::serve(listener, tls, app, door(), rx));
        tracing::info!(api = %api_addr, tls = has_tls, "gateway started");
        Ok(Gateway {
            listeners,
            api_addr,
            tls: has_tls,
            admin_token,
            store,
            journal,
            shutdown,
            server,
            instance,
            repeats,
            agents: agent_hub,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where the listener of a protocol's own clients is, when it has one.
    pub fn listener(&self, kind: ConnectionKind) -> Option<SocketAddr> {
        self.listeners.get(&kind).copied()
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
        // Agent tunnels end before the journal closes, each with its event.
        self.agents.shut_down(AGENT_SHUTDOWN_WAIT).await;
        self.repeats.flush();
        if let Err(e) = self.journal.close().await {
            tracing::error!(error = %e, "the audit journal could not be shipped; it will be at the next start");
        }
        if let Err(e) = self
            .store
            .append_audit(&Event::new(
                "gateway.stop",
                json!({"instance": self.instance.id}),
            ))
            .await
        {
            tracing::error!(error = %e, "could not record gateway stop");
        }
        self.instance.stopped();
        self.store.close().await;
    }
}

/// How long a stopping gateway waits for its agent tunnels to record their end.
const AGENT_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// Descriptors kept for everything but client connections: the store's pool, the
/// journal, the API's connections, recordings being written.
const RESERVED_DESCRIPTORS: usize = 512;
/// What one client connection costs: its socket, the target's, its recording file.
const DESCRIPTORS_PER_CONNECTION: usize = 3;

/// Raises the soft open-files limit to the hard one and says how many client
/// connections, over all listeners, it leaves room for.
fn descriptor_budget() -> Arc<warden_net::DescriptorBudget> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let budget =
        warden_net::DescriptorBudget::new(limit, DESCRIPTORS_PER_CONNECTION, RESERVED_DESCRIPTORS);
    tracing::info!(
        open_files = limit,
        connections = budget.max(),
        "client connections the open-files limit leaves room for"
    );
    budget
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

/// Every protocol the gateway serves. Adding a protocol is its crate and one line
/// here; the gateway has no other per-protocol code.
fn protocols(
    config: &Config,
    gate: &Arc<gate::SessionGate>,
) -> Result<Vec<Registration>, GatewayError> {
    let registered = [
        warden_pg::register(&config.pg, gate.clone()),
        warden_mysql::register(&config.mysql, gate.clone()),
        warden_ssh::register(&config.ssh, &config.ssh_host_key_path(), gate.clone()),
        warden_http::register_kubernetes(&config.kubernetes, gate.clone()),
        warden_http::register_http(&config.http, gate.clone()),
    ];
    registered
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(GatewayError::Config)
}

/// Binds a protocol's listener and serves each client on its own task until
/// shutdown, in a span named after the protocol; a failing accept (out of
/// descriptors) backs off.
/// How long a client turned away at the door has to read why.
pub(crate) const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A listener's door: its connection limits, and where refusals are recorded.
pub(crate) struct Door {
    gate: Arc<warden_net::ConnectionGate>,
    repeats: Arc<repeats::RepeatLog>,
}

impl Door {
    /// Lets `peer` in, or records why not (`listener.refused`, repeats aggregated).
    pub(crate) fn admit(
        &self,
        protocol: &str,
        peer: SocketAddr,
    ) -> Result<warden_net::Permit, warden_net::Overload> {
        self.gate.admit(peer.ip()).inspect_err(|overload| {
            let event = Event::new(
                "listener.refused",
                json!({"protocol": protocol, "client": peer.to_string(),
                       "code": overload.code(), "reason": overload.to_string()}),
            );
            self.repeats
                .record(&peer.ip().to_string(), overload.code(), event);
        })
    }
}

async fn start_listener(
    kind: ConnectionKind,
    addr: SocketAddr,
    proxy: Arc<dyn warden_net::ProtocolProxy>,
    door: Door,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, GatewayError> {
    use tracing::Instrument;
    let protocol = kind.as_str();
    let (listener, local) = bind_listener(addr, protocol).await?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            match accepted {
                Ok((stream, peer)) => match door.admit(protocol, peer) {
                    Ok(permit) => {
                        let span = tracing::info_span!("session", protocol, client = %peer);
                        let serving = proxy.clone().serve(stream, peer);
                        tokio::spawn(
                            async move {
                                serving.await;
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                    Err(overload) => {
                        let refusing = proxy.clone().refuse(stream, overload.to_string());
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusing).await;
                        });
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, protocol, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    tracing::info!(%protocol, addr = %local, "proxy listening");
    Ok(local)
}
