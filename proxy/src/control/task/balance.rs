//! The control task's view of a pool's bounded load for `status`: the
//! same bound the data path applies (`routing::bounded`), from the same
//! live counts, over the same routable backends.

use super::ControlTask;
use crate::config::Pool;
use crate::control::api::BalanceStatus;
use crate::routing::bounded::{bound, Load};
use crate::routing::BackendKey;

impl ControlTask {
    /// None for a pool without `balance_factor`.
    pub(super) fn balance_status(&self, pool: &Pool) -> Option<BalanceStatus> {
        let factor = pool.balance_factor?;
        let registry = &self.routing.registry;
        let routable: Vec<(&str, u32, u64)> = pool
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .filter_map(|b| {
                let key = BackendKey::new(&pool.name, &b.id);
                self.state_of(&key)
                    .takes_new_connections()
                    .then(|| (b.id.as_str(), b.weight, registry.count(&key) as u64))
            })
            .collect();
        let load = Load {
            connections: routable.iter().map(|r| r.2).sum(),
            weight: routable.iter().map(|r| u64::from(r.1)).sum(),
        };
        Some(BalanceStatus {
            factor: factor.to_string(),
            routable_connections: load.connections,
            bounds: routable
                .iter()
                .map(|(id, weight, _)| (id.to_string(), bound(factor, *weight, load)))
                .collect(),
            overflow_total: registry.overflows(&pool.name),
        })
    }
}
