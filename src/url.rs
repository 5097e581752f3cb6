//! The little URL handling the runtime needs: split a URL into scheme and host, build the gateway
//! query, and decide whether a `resume_gateway_url` may be followed.

/// The parts of an absolute URL this crate looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Url<'a> {
    pub scheme: &'a str,
    /// Lower-case comparison is up to the caller; brackets of an IPv6 literal are kept.
    pub host: &'a str,
}

impl<'a> Url<'a> {
    /// Splits `scheme://[userinfo@]host[:port][/path][?query]`; `None` if it is not of that form.
    pub fn parse(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if host_port.starts_with('[') {
            &host_port[..=host_port.find(']')?]
        } else {
            host_port.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return None;
        }
        Some(Self { scheme, host })
    }
}

/// The URL to open for `base` (a gateway or resume URL without query): docs/protocol.md §1.
pub(crate) fn connect_url(base: &str, compress: Option<&str>) -> String {
    let base = base.split('?').next().unwrap_or(base);
    // `wss://host` needs a path before the query; `wss://host/resume` has one.
    let has_path = base
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let slash = if has_path { "" } else { "/" };
    match compress {
        Some(c) => format!("{base}{slash}?v=10&encoding=json&compress={c}"),
        None => format!("{base}{slash}?v=10&encoding=json"),
    }
}

/// Whether a `resume_gateway_url` from the network may be followed: same scheme as the gateway URL,
/// and the gateway URL's host or a subdomain of an allowed domain (docs/design.md, "Resume URLs": the token goes
/// to whoever the client resumes with).
pub(crate) fn resume_url_allowed(resume: &str, gateway: &str, allowed_domains: &[String]) -> bool {
    let (Some(resume), Some(gateway)) = (Url::parse(resume), Url::parse(gateway)) else {
        return false;
    };
    if !resume.scheme.eq_ignore_ascii_case(gateway.scheme) {
        return false;
    }
    let host = resume.host.to_ascii_lowercase();
    if host == gateway.host.to_ascii_lowercase() {
        return true;
    }
    allowed_domains.iter().any(|domain| {
        let domain = domain.trim_start_matches('.').to_ascii_lowercase();
        host == domain
            || host
                .strip_suffix(&domain)
                .is_some_and(|prefix| prefix.ends_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scheme_and_host() {
        let u = Url::parse("wss://user@gateway-us-east1-b.discord.gg:443/path?x=1").unwrap();
        assert_eq!((u.scheme, u.host), ("wss", "gateway-us-east1-b.discord.gg"));
        assert_eq!(Url::parse("ws://[::1]:80").unwrap().host, "[::1]");
        assert_eq!(
            Url::parse("ws://127.0.0.1:9/resume").unwrap().host,
            "127.0.0.1"
        );
        for bad in ["gateway.discord.gg", "wss://", "://x", "wss:///path"] {
            assert_eq!(Url::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn builds_the_gateway_query() {
        assert_eq!(
            connect_url("wss://g.discord.gg", None),
            "wss://g.discord.gg/?v=10&encoding=json"
        );
        assert_eq!(
            connect_url("wss://g.discord.gg/?v=9", Some("zlib-stream")),
            "wss://g.discord.gg/?v=10&encoding=json&compress=zlib-stream"
        );
        assert_eq!(
            connect_url("ws://127.0.0.1:9/resume", None),
            "ws://127.0.0.1:9/resume?v=10&encoding=json"
        );
    }

    #[test]
    fn follows_resume_urls_only_to_trusted_hosts() {
        let allowed = vec!["discord.gg".to_owned()];
        let gw = "wss://gateway.discord.gg";
        assert!(resume_url_allowed(
            "wss://gateway-us-east1-b.discord.gg",
            gw,
            &allowed
        ));
        assert!(resume_url_allowed(
            "wss://GATEWAY.discord.gg/",
            gw,
            &allowed
        ));
        assert!(!resume_url_allowed(
            "ws://gateway-us-east1-b.discord.gg",
            gw,
            &allowed
        ));
        assert!(!resume_url_allowed("wss://evil.example", gw, &allowed));
        assert!(!resume_url_allowed("wss://notdiscord.gg", gw, &allowed));
        assert!(!resume_url_allowed(
            "wss://discord.gg.evil.example",
            gw,
            &allowed
        ));
        assert!(!resume_url_allowed("not a url", gw, &allowed));
        assert!(resume_url_allowed(
            "ws://127.0.0.1:5/resume",
            "ws://127.0.0.1:5",
            &allowed
        ));
        assert!(!resume_url_allowed(
            "ws://127.0.0.2:5/resume",
            "ws://127.0.0.1:5",
            &allowed
        ));
    }
}
