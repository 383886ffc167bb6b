//! The one assembly of a running relay's core, shared by the binary and the test harness so the
//! tests run what production runs: snapshot and its reloader, usage writer, key authentication,
//! the relay with its
//! ledgers and account costs seeded from the records, the admin services.

use std::sync::Arc;

use relay_store::{StoreError, UsageWriter, UsageWriterHandle};

use crate::admin::AdminService;
use crate::admin_auth::AdminAuth;
use crate::auth::KeyAuthenticator;
use crate::bootstrap::Installation;
use crate::metrics::Metrics;
use crate::snapshot::SnapshotStore;
use crate::{Relay, RelaySettings};

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
}

/// Loads the snapshot, starts the reloader and the usage writer, builds the relay and seeds its
/// key ledgers and account costs from the usage records (limits survive a restart).
pub async fn assemble(
    installation: &Installation,
    settings: RelaySettings,
) -> Result<Assembly, StoreError> {
    let snapshots = SnapshotStore::load(
        installation.store.clone(),
        installation.keyring.secret_box.clone(),
    )
    .await?;
    let (usage_sink, usage_writer) = UsageWriter::spawn(installation.store.clone());
    let metrics = Arc::new(Metrics::new());
    let admin = AdminService::new(installation.store.clone(), &installation.keyring)
        .with_egress(settings.egress.clone());
    let keys = Arc::new(KeyAuthenticator::new(
        snapshots.clone(),
        installation.keyring.key_hasher.clone(),
    ));
    let relay = Relay::new(snapshots.clone(), usage_sink, metrics.clone(), settings);
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
        admin_auth: Arc::new(AdminAuth::new(installation.store.clone())),
        metrics,
        usage_writer,
        reloader,
    })
}
