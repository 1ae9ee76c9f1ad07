//! Which auth config a request gets: the route table indexed by host, the choice between
//! `X-Auth-Config`, the first matching route and `default_action`, and the `allowed_hosts`
//! guard that keeps a token from leaving for a host it was not issued for.

use std::collections::HashMap;

use fnv::FnvBuildHasher;
use http::Method;

use crate::config::{AuthConfig, Config, DefaultAction, HostPattern, Route, RouteKind};

/// What the route table decided for one request.
#[derive(Debug)]
pub struct Selection<'a> {
    /// The first matching route, if any (it may rewrite the target).
    pub route: Option<&'a Route>,
    /// The auth config whose token goes on the request, by its position in
    /// [`Config::auth_configs`]; `None` passes the request through untouched.
    pub auth_config: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("no auth config named `{0}` (X-Auth-Config)")]
    UnknownAuthConfig(String),
    #[error("the request names no auth config and matches no route, and default_action is deny")]
    Denied,
}

/// The request facts selection looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// Absolute-form target host (lowercase) and port, or the `Host` header of an origin-form request.
    pub host: Option<(&'a str, u16)>,
    pub path: &'a str,
    /// Origin-form: only gateway routes apply. Absolute-form: only forward routes.
    pub origin_form: bool,
    /// The `X-Auth-Config` header, when present.
    pub named_config: Option<&'a str>,
}

/// The routes indexed by host, so choosing one costs the routes that could match the
/// request's host, not the whole table. Lists hold route positions in file order.
///
/// FNV, not `SipHash`: the keys come from the config, so a request's host cannot make the
/// buckets longer, and FNV hashes a host name in a fraction of `SipHash`'s time.
#[derive(Debug, Default)]
pub struct RouteIndex {
    /// `match.host: api.example.com` → those routes.
    exact: HashMap<String, Vec<usize>, FnvBuildHasher>,
    /// `match.host: *.example.com` → those routes, keyed by `.example.com`.
    suffix: HashMap<String, Vec<usize>, FnvBuildHasher>,
    /// Routes without `match.host`.
    any_host: Vec<usize>,
}

impl RouteIndex {
    #[must_use]
    pub fn new(routes: &[Route]) -> Self {
        let mut index = Self::default();
        for (position, route) in routes.iter().enumerate() {
            match &route.host {
                None => index.any_host.push(position),
                Some(HostPattern::Host(host) | HostPattern::HostPort(host, _)) => {
                    index.exact.entry(host.clone()).or_default().push(position);
                }
                Some(HostPattern::Suffix(suffix)) => index.suffix.entry(suffix.clone()).or_default().push(position),
            }
        }
        index
    }

    /// The first route, in file order, that matches `facts`.
    fn first<'a>(&self, routes: &'a [Route], facts: &RequestFacts<'_>) -> Option<&'a Route> {
        let matching = |positions: &[usize]| {
            positions.iter().copied().find(|&position| {
                let route = &routes[position];
                matches!(route.kind, RouteKind::Gateway { .. }) == facts.origin_form
                    && route.matches(facts.method, facts.host, facts.path)
            })
        };
        let mut best = matching(&self.any_host);
        if let Some((host, _)) = facts.host {
            let mut consider = |positions: Option<&Vec<usize>>| {
                if let Some(found) = positions.and_then(|positions| matching(positions)) {
                    best = Some(best.map_or(found, |best| best.min(found)));
                }
            };
            if !self.exact.is_empty() {
                consider(self.exact.get(host));
            }
            // Every `.suffix` of the host: `a.b.example.com` → `.b.example.com`, `.example.com`, `.com`.
            if !self.suffix.is_empty() {
                for (dot, _) in host.match_indices('.') {
                    consider(self.suffix.get(&host[dot..]));
                }
            }
        }
        best.map(|position| &routes[position])
    }
}

/// Picks the route and auth config for a request: `X-Auth-Config`, else the first
/// matching route (in file order), else `default_action`.
pub fn select<'a>(
    config: &'a Config,
    index: &RouteIndex,
    facts: RequestFacts<'_>,
) -> Result<Selection<'a>, SelectError> {
    let route = index.first(&config.routes, &facts);
    let auth_config = match facts.named_config {
        Some(name) => Some(
            config
                .position(name)
                .ok_or_else(|| SelectError::UnknownAuthConfig(name.to_owned()))?,
        ),
        None => route.map(|route| route.auth_config),
    };
    if auth_config.is_none() && route.is_none() && config.default_action == DefaultAction::Deny {
        return Err(SelectError::Denied);
    }
    Ok(Selection { route, auth_config })
}

/// The guard: may this config's token be sent to `host:port`?
#[must_use]
pub fn host_allowed(auth_config: &AuthConfig, host: &str, port: u16) -> bool {
    auth_config
        .allowed_hosts
        .iter()
        .any(|pattern| pattern.matches(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fmt::Write as _;

    const HOSTS: [Option<&str>; 6] = [
        None,
        Some("a.test"),
        Some("b.a.test"),
        Some("*.a.test"),
        Some("*.test"),
        Some("c.test"),
    ];
    const PREFIXES: [&str; 3] = ["/", "/v1/", "/v1/x"];
    const METHODS: [&str; 3] = ["", "[GET]", "[POST]"];

    /// A config with one auth config and the routes `(host, prefix, methods, gateway)`.
    fn table(routes: &[(usize, usize, usize, bool)]) -> Config {
        let mut yaml = String::from(
            "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [a.test]\nroutes:\n",
        );
        for &(host, prefix, methods, gateway) in routes {
            yaml.push_str("  - match: {");
            if let Some(host) = HOSTS[host] {
                let _ = write!(yaml, " host: \"{host}\",");
            }
            let _ = write!(yaml, " path_prefix: {}", PREFIXES[prefix]);
            if !METHODS[methods].is_empty() {
                let _ = write!(yaml, ", methods: {}", METHODS[methods]);
            }
            yaml.push_str(" }\n    auth_config: a\n");
            if gateway {
                yaml.push_str("    upstream: https://up.test\n");
            }
        }
        Config::from_yaml("t.yaml", &yaml, &crate::config::Env::new()).unwrap()
    }

    proptest::proptest! {
        /// The index picks exactly the route a walk of the whole table in file order picks.
        #[test]
        fn the_index_picks_what_a_linear_walk_picks(
            routes in proptest::collection::vec((0..HOSTS.len(), 0..PREFIXES.len(), 0..METHODS.len(), proptest::bool::ANY), 0..12),
            requests in proptest::collection::vec((0..6_usize, 0..4_usize, proptest::bool::ANY, proptest::bool::ANY), 1..20),
        ) {
            let config = table(&routes);
            let request_hosts = [None, Some("a.test"), Some("b.a.test"), Some("x.b.a.test"), Some("c.test"), Some("test")];
            let paths = ["/", "/v1/", "/v1/x/y", "/other"];
            for (host, path, post, origin_form) in requests {
                let method = if post { Method::POST } else { Method::GET };
                let facts = RequestFacts {
                    method: &method,
                    host: request_hosts[host].map(|h| (h, 443)),
                    path: paths[path],
                    origin_form,
                    named_config: None,
                };
                let linear = config.routes.iter().position(|route| {
                    matches!(route.kind, RouteKind::Gateway { .. }) == origin_form
                        && route.matches(&method, facts.host, facts.path)
                });
                let indexed = RouteIndex::new(&config.routes)
                    .first(&config.routes, &facts)
                    .map(|route| config.routes.iter().position(|r| std::ptr::eq(r, route)).unwrap());
                proptest::prop_assert_eq!(linear, indexed, "{:?} {:?}", routes, facts);
            }
        }
    }
}
