//! Which auth config a request gets: host patterns, the route table, and the
//! `allowed_hosts` guard that keeps a token from leaving for a host it was not issued for.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use fnv::FnvBuildHasher;
use http::Method;
use url::Url;

use crate::config::{AuthConfig, Config, DefaultAction};

/// A host, `host:port`, or `*.suffix`, as written in `allowed_hosts` and `match.host`.
#[derive(Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com` or an IP: any port.
    Host(String),
    /// `api.example.com:8443`: that port only.
    HostPort(String, u16),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself), any port.
    Suffix(String),
}

impl HostPattern {
    /// Parses a pattern; `allow_port` is false for `match.host`, which names hosts only.
    pub fn parse(text: &str, allow_port: bool) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        if let Some(suffix) = text.strip_prefix("*.") {
            if suffix.is_empty() || !suffix.split('.').all(is_dns_label) {
                return Err(format!("`{text}` is not a valid `*.suffix` pattern"));
            }
            return Ok(Self::Suffix(format!(".{suffix}")));
        }
        let (host, port) =
            split_host_port(&text).ok_or_else(|| format!("`{text}` is not a host, host:port or *.suffix"))?;
        if !is_host(&host) {
            return Err(format!("`{text}` is not a valid host name or IP address"));
        }
        match port {
            None => Ok(Self::Host(host)),
            Some(_) if !allow_port => Err(format!("`{text}`: a route matches a host, not a port")),
            Some(port) => Ok(Self::HostPort(host, port)),
        }
    }

    /// `host` is lowercase without brackets; `port` is the effective port of the target.
    #[must_use]
    pub fn matches(&self, host: &str, port: u16) -> bool {
        match self {
            Self::Host(h) => h == host,
            Self::HostPort(h, p) => h == host && *p == port,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    /// The same pattern with any port dropped (routes contribute hosts, any port).
    #[must_use]
    pub fn without_port(&self) -> Self {
        match self {
            Self::HostPort(h, _) => Self::Host(h.clone()),
            other => other.clone(),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(h) if h.contains(':') => write!(f, "[{h}]"),
            Self::Host(h) => f.write_str(h),
            Self::HostPort(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            Self::HostPort(h, p) => write!(f, "{h}:{p}"),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host.to_owned(), None)),
            _ => Some((host.to_owned(), Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    if text.matches(':').count() > 1 {
        return Some((text.to_owned(), None)); // bare IPv6
    }
    match text.split_once(':') {
        Some((host, port)) => Some((host.to_owned(), Some(port.parse().ok()?))),
        None => Some((text.to_owned(), None)),
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_host(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty() && host.len() <= 253 && host.split('.').all(is_dns_label))
}

/// Lowercase host without IPv6 brackets, and the effective port, of a URL-like target.
#[must_use]
pub fn host_and_port(url: &Url) -> Option<(String, u16)> {
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port_or_known_default()?))
}

/// How a route sends a matched request on.
#[derive(Clone, Debug)]
pub enum RouteKind {
    /// Absolute-form (`HTTP_PROXY`) requests; the target is the request URI.
    Forward { upstream_tls: bool },
    /// Origin-form requests to bearerd itself; the prefix is replaced by `upstream`.
    Gateway { upstream: Url },
}

#[derive(Clone, Debug)]
pub struct Route {
    pub host: Option<HostPattern>,
    pub path_prefix: String,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub auth_config: Arc<AuthConfig>,
    pub kind: RouteKind,
}

impl Route {
    fn matches(&self, method: &Method, host: Option<(&str, u16)>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some((h, p))) => pattern.matches(h, p),
            (Some(_), None) => false,
        };
        host_ok && path.starts_with(&self.path_prefix) && (self.methods.is_empty() || self.methods.contains(method))
    }
}

/// What the route table decided for one request.
#[derive(Debug)]
pub struct Selection<'a> {
    /// The first matching route, if any (it may rewrite the target).
    pub route: Option<&'a Route>,
    /// The auth config whose token goes on the request; `None` passes it through untouched.
    pub auth_config: Option<Arc<AuthConfig>>,
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
pub fn select<'a>(config: &'a Config, facts: RequestFacts<'_>) -> Result<Selection<'a>, SelectError> {
    let route = config.route_index.first(&config.routes, &facts);
    let auth_config = match facts.named_config {
        Some(name) => Some(
            config
                .auth_config(name)
                .ok_or_else(|| SelectError::UnknownAuthConfig(name.to_owned()))?,
        ),
        None => route.map(|route| Arc::clone(&route.auth_config)),
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

    #[test]
    fn patterns_parse_and_match() {
        let host = HostPattern::parse("API.Example.com", true).unwrap();
        assert!(host.matches("api.example.com", 443));
        assert!(host.matches("api.example.com", 8080));
        assert!(!host.matches("evil-api.example.com", 443));
        assert!(!host.matches("api.example.com.evil.com", 443));

        let host_port = HostPattern::parse("api.example.com:8443", true).unwrap();
        assert!(host_port.matches("api.example.com", 8443));
        assert!(!host_port.matches("api.example.com", 443));

        let suffix = HostPattern::parse("*.example.com", true).unwrap();
        assert!(suffix.matches("a.example.com", 443));
        assert!(suffix.matches("a.b.example.com", 80));
        assert!(!suffix.matches("example.com", 443));
        assert!(!suffix.matches("badexample.com", 443));

        let v6 = HostPattern::parse("[::1]:9000", true).unwrap();
        assert!(v6.matches("::1", 9000));
        assert!(!v6.matches("::1", 9001));
        assert_eq!(v6.to_string(), "[::1]:9000");
        assert!(HostPattern::parse("::1", true).unwrap().matches("::1", 1));
        assert!(HostPattern::parse("127.0.0.1", true).unwrap().matches("127.0.0.1", 1));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "*.", "a b", "host:port", "host:99999", "*.a..b", "[::1"] {
            assert!(HostPattern::parse(bad, true).is_err(), "{bad}");
        }
        assert!(HostPattern::parse("api.example.com:443", false).is_err());
    }

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
                let indexed = config
                    .route_index
                    .first(&config.routes, &facts)
                    .map(|route| config.routes.iter().position(|r| std::ptr::eq(r, route)).unwrap());
                proptest::prop_assert_eq!(linear, indexed, "{:?} {:?}", routes, facts);
            }
        }
    }

    #[test]
    fn host_and_port_normalises() {
        let url = Url::parse("https://API.Example.com/x").unwrap();
        assert_eq!(host_and_port(&url), Some(("api.example.com".into(), 443)));
        let url = Url::parse("http://[::1]:8080/").unwrap();
        assert_eq!(host_and_port(&url), Some(("::1".into(), 8080)));
    }
}
