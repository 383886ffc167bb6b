//! The one assembly of a running relay's core, shared by the binary and the test harness so the
//! tests run what production runs: snapshot and its reloader, usage writer, key authentication,
//! the relay with its
//! ledgers and account costs seeded from the records, the admin services.

use std::sync::Arc;

use relay_store::{StoreError, UsageWriter, UsageWriterHandle};

use crate::coord::{CoordTasks, Coordinator};
use crate::limits::{SharedLedgers, Unavailable};

use crate::admin::AdminService;
use crate::admin_auth::AdminAuth;
use crate::auth::KeyAuthenticator;
use crate::bootstrap::Installation;
use crate::metrics::Metrics;
use crate::snapshot::SnapshotStore;
use crate::{Relay, RelaySettings};

#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("shared state: {0}")]
    Redis(#[from] relay_coord::CoordError),
}

/// The parts of a running relay; the caller serves them and, at shutdown, stops the reloader,
/// drains the relay's background writes, then the usage writer.
#[derive(Debug)]
pub struct Assembly {
    pub relay: Arc<Relay>,
    pub keys: Arc<KeyAuthenticator>,
    pub snapshots: Arc<SnapshotStore>,
    pub admin: AdminService,
    pub admin_auth: Arc<AdminAuth>,
    pub metrics: Arc<Metrics>,
    pub usage_writer: UsageWriterHandle,
    pub reloader: tokio::task::JoinHandle<()>,
    /// The coordination with other instances, when they share a Redis: stopped after the last
    /// request, before the usage writer.
    pub shared: Option<(Arc<Coordinator>, CoordTasks)>,
}

/// Where instances keep the state they share.
#[derive(Debug)]
pub struct SharedState<'a> {
    /// `redis://…`
    pub redis_url: &'a str,
    /// Every key written starts with `prefix:` (several installations may share a Redis).
    pub prefix: &'a str,
    pub on_unavailable: Unavailable,
}

impl Assembly {
    /// Writes what this instance still owes Redis and stops its coordination tasks.
    pub async fn close_shared(shared: Option<(Arc<Coordinator>, CoordTasks)>) {
        if let Some((coord, tasks)) = shared {
            tasks.stop(&coord).await;
        }
    }
}

/// Loads the snapshot, starts the reloader and the usage writer, builds the relay and seeds its
/// key ledgers and account costs from the usage records (limits survive a restart).
pub async fn assemble(
    installation: &Installation,
    settings: RelaySettings,
    shared: Option<&SharedState<'_>>,
) -> Result<Assembly, AssemblyError> {
    let snapshots = SnapshotStore::load(
        installation.store.clone(),
        installation.keyring.secret_box.clone(),
    )
    .await?;
    let (usage_sink, usage_writer) =
        UsageWriter::spawn_with_limit(installation.store.clone(), settings.usage_queue_limit);
    let metrics = Arc::new(Metrics::new());
    let admin = AdminService::new(installation.store.clone(), &installation.keyring)
        .with_egress(settings.egress.clone());
    let keys = Arc::new(KeyAuthenticator::new(
        snapshots.clone(),
        installation.keyring.key_hasher.clone(),
    ));
    let mut relay = Relay::new(snapshots.clone(), usage_sink, metrics.clone(), settings);
    let admin_auth = Arc::new(AdminAuth::new(installation.store.clone()));
    let shared = match shared {
        None => None,
        Some(shared) => {
            let redis = relay_coord::Redis::connect(shared.redis_url, shared.prefix).await?;
            let (coord, mut tasks) = Coordinator::start(redis);
            let ledgers = SharedLedgers::new(
                coord.clone(),
                installation.store.clone(),
                shared.on_unavailable,
                &mut tasks,
            );
            relay.share(coord.clone(), ledgers);
            metrics.register_shared(&coord);
            keys.throttle().share(coord.clone(), "key");
            admin_auth.throttle().share(coord.clone(), "login");
            coord.watch(
                snapshots.clone(),
                vec![keys.throttle().clone(), admin_auth.throttle().clone()],
                &mut tasks,
            );
            Some((coord, tasks))
        }
    };
    relay
        .limiter()
        .seed_from_store(
            &installation.store,
            &snapshots.current(),
            crate::clock::now_ms(),
        )
        .await?;
    relay.seed_account_costs().await?;
    let reloader = snapshots.spawn_reloader();
    Ok(Assembly {
        relay: Arc::new(relay),
        keys,
        snapshots,
        admin,
        admin_auth,
        metrics,
        usage_writer,
        reloader,
        shared,
    })
}
