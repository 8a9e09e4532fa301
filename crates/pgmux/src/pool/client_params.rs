//! The settings a pool's clients see: what its servers report, one shared
//! map per distinct set of client settings, and (transaction mode) what an
//! earlier login with the same startup settings came to.

use std::sync::Arc;

use bytes::Bytes;

use super::{lock, CheckoutError, Pool};
use crate::params::ParamMap;

/// Distinct client setting maps a pool shares among its clients.
const MAX_PARAM_VARIANTS: usize = 64;

impl Pool {
    /// The settings a fresh server of this pool reports (empty until the
    /// first server logged in).
    pub fn reported(&self) -> ParamMap {
        lock(&self.defaults).clone().unwrap_or_default()
    }

    /// Whether servers of this pool report `name` (ParameterStatus).
    pub fn reports(&self, name: &str) -> bool {
        lock(&self.defaults)
            .as_ref()
            .is_some_and(|d| d.get(name).is_some())
    }

    /// One shared map per distinct set of client settings: clients that log
    /// in alike share it, and servers adopt it, so checking that a server
    /// matches its client is a pointer compare.
    pub fn intern_params(&self, params: ParamMap) -> ParamMap {
        let mut variants = lock(&self.param_variants);
        if let Some(known) = variants.iter().find(|v| **v == params) {
            return known.clone();
        }
        if variants.len() < MAX_PARAM_VARIANTS {
            variants.push(params.clone());
        }
        params
    }

    /// The settings an earlier transaction-mode login with the same startup
    /// packet settings came to, against the same server defaults, and the
    /// ParameterStatus messages its greeting carried: most clients of a
    /// pool log in alike, and this spares each of them building, spelling
    /// and interning a map of its own, and writing its greeting.
    pub fn login_seen(
        &self,
        startup: &[(String, String)],
        defaults: &ParamMap,
    ) -> Option<(ParamMap, Bytes)> {
        lock(&self.logins_seen)
            .iter()
            .find(|seen| seen.defaults.shares_with(defaults) && seen.startup == startup)
            .map(|seen| (seen.params.clone(), seen.statuses.clone()))
    }

    /// Remember what a login came to (see [`Pool::login_seen`]); a pool
    /// keeps at most [`MAX_PARAM_VARIANTS`] of them, the first ones.
    pub fn remember_login(
        &self,
        startup: &[(String, String)],
        defaults: &ParamMap,
        params: &ParamMap,
        statuses: &Bytes,
    ) {
        let mut seen = lock(&self.logins_seen);
        seen.retain(|s| s.defaults.shares_with(defaults));
        if seen.len() < MAX_PARAM_VARIANTS {
            seen.push(LoginSeen {
                startup: startup.to_vec(),
                defaults: defaults.clone(),
                params: params.clone(),
                statuses: statuses.clone(),
            });
        }
    }

    /// The parameters a fresh server reports, learnt from the first server
    /// this pool opened (opening one if needed, which also surfaces login
    /// errors such as an unknown database to the first client).
    pub async fn server_defaults(self: &Arc<Self>) -> Result<ParamMap, CheckoutError> {
        if let Some(d) = lock(&self.defaults).clone() {
            return Ok(d);
        }
        let checkout = self.checkout().await?;
        let params = checkout.server().params.clone();
        checkout.checkin();
        Ok(lock(&self.defaults).clone().unwrap_or(params))
    }
}

/// A transaction-mode login's startup settings, the server defaults they
/// were applied to, the settings they came to and the ParameterStatus
/// messages of its greeting.
pub(super) struct LoginSeen {
    startup: Vec<(String, String)>,
    defaults: ParamMap,
    params: ParamMap,
    statuses: Bytes,
}
