//! The running state: what serving needs that a configuration, plain data, does not hold.
//! It is built from one [`Config`] when that is loaded, and swapped whole at a reload, so a
//! request sees one configuration and the state built from it, never a mix of two.

use std::sync::Arc;

use crate::config::Route;
use crate::config::{AuthConfig, Config};
use crate::metrics::{ConfigSeries, Metrics};
use crate::routes::{self, RequestFacts, RouteIndex, SelectError};
use crate::token::{Slot, TokenCache};

/// One configuration in force, with its route index and its auth configs' running parts.
pub struct Running {
    pub config: Arc<Config>,
    /// `config.routes` by host.
    routes: RouteIndex,
    /// One per auth config, in the order of `config.auth_configs`.
    active: Box<[Active]>,
}

/// An auth config in force, with what serving it needs: its token cache slot and its most
/// used metric series, each found once here rather than on every request.
pub struct Active {
    pub config: Arc<AuthConfig>,
    pub slot: Arc<Slot>,
    pub series: ConfigSeries,
}

/// What the route table chose for a request, resolved to the running auth config.
pub struct Chosen<'a> {
    /// The first matching route, if any (it may rewrite the target).
    pub route: Option<&'a Route>,
    /// The auth config whose token goes on the request; `None` passes it through untouched.
    pub auth_config: Option<&'a Active>,
}

impl Running {
    /// The running state of `config`: its routes indexed, each auth config's token slot
    /// (the one it already had when its token-shaping fields are unchanged) and series.
    #[must_use]
    pub fn build(config: Arc<Config>, tokens: &TokenCache, metrics: &Metrics) -> Self {
        let active = config
            .auth_configs
            .iter()
            .map(|auth_config| Active {
                config: Arc::clone(auth_config),
                slot: tokens.slot(auth_config),
                series: metrics.series(&auth_config.id),
            })
            .collect();
        Self {
            routes: RouteIndex::new(&config.routes),
            config,
            active,
        }
    }

    /// The auth config named `id`.
    #[must_use]
    pub fn named(&self, id: &str) -> Option<&Active> {
        self.config.position(id).map(|position| &self.active[position])
    }

    /// Every auth config in force, in file order.
    pub fn active(&self) -> impl Iterator<Item = &Active> {
        self.active.iter()
    }

    /// The route and auth config for a request (see [`routes::select`]).
    pub fn choose(&self, facts: RequestFacts<'_>) -> Result<Chosen<'_>, SelectError> {
        let selection = routes::select(&self.config, &self.routes, facts)?;
        Ok(Chosen {
            route: selection.route,
            auth_config: selection.auth_config.map(|position| &self.active[position]),
        })
    }
}
