//! What every handler shares.

use std::sync::Arc;

use relay_core::admin::AdminService;
use relay_core::admin_auth::AdminAuth;
use relay_core::auth::KeyAuthenticator;
use relay_core::Relay;

use crate::ServerSettings;

#[derive(Debug, Clone)]
pub struct AppState {
    pub relay: Arc<Relay>,
    /// Resolves relay keys (before anything reaches the relay).
    pub keys: Arc<KeyAuthenticator>,
    pub settings: Arc<ServerSettings>,
    pub admin: Arc<AdminService>,
    pub admin_auth: Arc<AdminAuth>,
}
