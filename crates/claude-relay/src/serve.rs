//! `claude-relay serve`: wire the parts together, serve, and shut down without losing usage.

use std::sync::Arc;

use anyhow::Context;
use claude_relay::config::{Config, LogFormat};
use relay_core::admin::AdminService;
use relay_core::bootstrap::{
    ensure_admin, open_installation_to_serve, AdminBootstrap, ADMIN_USERNAME,
};
use relay_server::{router, AppState};
use tokio::net::TcpListener;

use crate::cli::notice;

fn init_telemetry(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (only possible in tests) is harmless; ignore it.
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Raises the soft limit on open files to the hard limit and returns the limit now in force.
fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            limit.current
        }
    }
}

/// Client connections that fit in `fd_limit`: each may need an upstream connection too, and
/// the listener, the database and the logs need some headroom.
fn connection_cap(fd_limit: Option<u64>) -> usize {
    const HEADROOM: u64 = 64;
    let cap = fd_limit.map_or(1_000_000, |limit| limit.saturating_sub(HEADROOM) / 2);
    usize::try_from(cap.clamp(16, 1_000_000)).unwrap_or(16)
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    init_telemetry(&config);
    let fd_limit = raise_fd_limit();
    config.server.max_connections = config
        .max_connections
        .unwrap_or_else(|| connection_cap(fd_limit));
    tracing::info!(
        fd_limit,
        max_connections = config.server.max_connections,
        "connection cap"
    );
    let installation = open_installation_to_serve(
        &config.data_dir,
        config.master_key.as_ref().map(|secret| secret.0.as_str()),
        config.database_url.as_ref().map(|secret| secret.0.as_str()),
    )
    .await?;
    if installation.created {
        tracing::info!(data_dir = %config.data_dir.display(), "created a new installation");
    }
    if let Some(redis) = &config.redis {
        tracing::info!(
            url = %relay_store::redact_url(&redis.url.0),
            prefix = %redis.prefix,
            when_unavailable = ?redis.on_unavailable,
            "key limits, account health and concurrency, sticky sessions and token refreshes \
             are shared through Redis"
        );
    }
    if installation.store.backend() == relay_store::Backend::Postgres && config.redis.is_none() {
        // Limits, cooldowns and sticky sessions are still counted in this process.
        tracing::warn!(
            "PostgreSQL without Redis: key limits, account cooldowns and sticky sessions are \
             counted per instance; run a single instance in this mode"
        );
    }
    match ensure_admin(
        &installation.store,
        config
            .admin_password
            .as_ref()
            .map(|secret| secret.0.as_str()),
    )
    .await?
    {
        AdminBootstrap::AlreadyPresent => {}
        AdminBootstrap::CreatedWithGivenPassword => {
            tracing::info!(
                username = ADMIN_USERNAME,
                "created the admin with the password from CLAUDE_RELAY_ADMIN_PASSWORD"
            );
        }
        AdminBootstrap::CreatedWithRandomPassword(password) => {
            // Shown once, on the terminal only: never through the log pipeline.
            notice(&format!(
                "created admin user '{ADMIN_USERNAME}' with password: {password}\n\
                 (shown once; set CLAUDE_RELAY_ADMIN_PASSWORD before the first start to choose it)"
            ));
        }
    }

    let shared = config
        .redis
        .as_ref()
        .map(|redis| relay_core::app::SharedState {
            redis_url: &redis.url.0,
            prefix: &redis.prefix,
            on_unavailable: redis.on_unavailable,
        });
    let assembly =
        relay_core::app::assemble(&installation, config.relay.clone(), shared.as_ref()).await?;
    let shared = assembly.shared;
    let relay = assembly.relay.clone();
    let reloader = assembly.reloader;
    let usage_writer = assembly.usage_writer;
    let metrics = assembly.metrics;
    let state = AppState {
        relay: relay.clone(),
        keys: assembly.keys.clone(),
        settings: Arc::new(config.server.clone()),
        admin: Arc::new(assembly.admin),
        admin_auth: assembly.admin_auth,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let shutdown = shutdown_signal();
    tracing::info!(address = %local, "listening");
    notice(&format!("claude-relay listening on http://{local}"));

    let purger = spawn_trash_purger(
        AdminService::new(installation.store.clone(), &installation.keyring),
        config.trash_retention,
    );
    relay_server::serve(listener, router(state), &config.server, metrics, shutdown).await;

    purger.abort();
    reloader.abort();
    let _ = tokio::join!(purger, reloader);
    // Account events spawned by the last requests, then the last usage records.
    relay.drain_background().await;
    relay_core::app::Assembly::close_shared(shared).await;
    usage_writer.shutdown().await;
    installation.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Purges keys that have been in the trash longer than `retention`, hourly.
fn spawn_trash_purger(
    admin: AdminService,
    retention: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    #[allow(clippy::disallowed_methods)] // aborted and joined at shutdown
    tokio::spawn(async move {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        let mut interval = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            interval.tick().await;
            match admin.purge_trash(retention_ms).await {
                Ok(purged) if !purged.is_empty() => {
                    tracing::info!(count = purged.len(), "purged keys from the trash");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot purge the key trash"),
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is *called*, not when
/// it is first polled: a signal that arrives right after the "listening" notice must not find
/// the default action (an abrupt exit) still in place.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (terminate, interrupt) => {
                tracing::warn!(
                    terminate = terminate.is_ok(),
                    interrupt = interrupt.is_ok(),
                    "cannot install signal handlers; falling back to Ctrl-C only"
                );
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutdown signal received");
    }
}
