//! Host patterns and routes as the configuration states them: which requests a route
//! matches and where it sends them. Choosing among them per request is `routes`' work.

use std::fmt;

use http::Method;
use url::Url;

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
    /// Absolute-form (`HTTP_PROXY`) requests; the target is the request URI. With
    /// `intercept`, a `CONNECT` to the route's host is terminated by bearerd's own TLS.
    Forward { upstream_tls: bool, intercept: bool },
    /// Origin-form requests to bearerd itself; the prefix is replaced by `upstream`.
    Gateway { upstream: Url },
}

#[derive(Clone, Debug)]
pub struct Route {
    pub host: Option<HostPattern>,
    pub path_prefix: String,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// The auth config it gives a request: its position in [`super::Config::auth_configs`].
    pub auth_config: usize,
    pub kind: RouteKind,
}

impl Route {
    /// The host whose `CONNECT`s this route has bearerd terminate (`intercept: true`).
    #[must_use]
    pub fn intercepted_host(&self) -> Option<&HostPattern> {
        match self.kind {
            RouteKind::Forward { intercept: true, .. } => self.host.as_ref(),
            _ => None,
        }
    }

    /// Whether a request for `method`, `host` (lowercase, and port) and `path` matches.
    #[must_use]
    pub fn matches(&self, method: &Method, host: Option<(&str, u16)>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some((h, p))) => pattern.matches(h, p),
            (Some(_), None) => false,
        };
        host_ok && path.starts_with(&self.path_prefix) && (self.methods.is_empty() || self.methods.contains(method))
    }
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

    #[test]
    fn host_and_port_normalises() {
        let url = Url::parse("https://API.Example.com/x").unwrap();
        assert_eq!(host_and_port(&url), Some(("api.example.com".into(), 443)));
        let url = Url::parse("http://[::1]:8080/").unwrap();
        assert_eq!(host_and_port(&url), Some(("::1".into(), 8080)));
    }
}
