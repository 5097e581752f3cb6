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
        let domain = domain.to_ascii_lowercase();
        // An empty entry would allow every host ending in a dot; `build()` refuses one anyway.
        !domain.is_empty()
            && (host == domain
                || host
                    .strip_suffix(&domain)
                    .is_some_and(|prefix| prefix.ends_with('.')))
    })
}

/// Discord's own domain: the gateway URL `GET /gateway/bot` answers and every `resume_gateway_url`
/// Discord sends are on it.
pub(crate) const DISCORD_DOMAIN: &str = "discord.gg";

/// The domains a `resume_gateway_url` may point at for this gateway URL: the bot's own list if it
/// set one; else `discord.gg` when the gateway is Discord's, and none when it is the bot's own host
/// (a proxy): the resume URLs Discord sends would go around the proxy, so resumes go through it
/// (docs/design.md, "Resume URLs").
pub(crate) fn resume_domains(explicit: Option<&[String]>, gateway_url: &str) -> Vec<String> {
    if let Some(domains) = explicit {
        return domains.to_vec();
    }
    let discords = Url::parse(gateway_url).is_some_and(|u| {
        let host = u.host.to_ascii_lowercase();
        host == DISCORD_DOMAIN
            || host
                .strip_suffix(DISCORD_DOMAIN)
                .is_some_and(|prefix| prefix.ends_with('.'))
    });
    if discords {
        vec![DISCORD_DOMAIN.to_owned()]
    } else {
        Vec::new()
    }
}

/// Why `domain` cannot be an entry of the resume allow-list, if it cannot: an entry is a bare host
/// name (`discord.gg`), which allows that host and its subdomains.
pub(crate) fn check_resume_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("it is empty");
    }
    if domain.contains("://") {
        return Err("it has a scheme; give the bare host name, e.g. discord.gg");
    }
    if domain.chars().any(char::is_whitespace) {
        return Err("it contains whitespace");
    }
    if domain.contains(['/', '?', '#']) {
        return Err("it has a path or query; give the bare host name");
    }
    if domain.contains('@') {
        return Err("it has user info; give the bare host name");
    }
    if domain.contains(':') {
        return Err("it has a port (or is an IPv6 literal); give the bare host name");
    }
    if domain.starts_with('.') {
        return Err("it starts with a dot; subdomains are always allowed, so give discord.gg, not .discord.gg");
    }
    if domain.ends_with('.') {
        return Err("it ends with a dot");
    }
    if domain.contains("..") {
        return Err("it has an empty label");
    }
    if !domain
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err("it has a character a host name cannot have");
    }
    Ok(())
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
    fn the_default_allow_list_is_discord_only_for_discords_gateway() {
        let discord = vec!["discord.gg".to_owned()];
        for gateway in [
            "wss://gateway.discord.gg",
            "wss://GATEWAY.Discord.gg/?v=10",
            "wss://discord.gg",
        ] {
            assert_eq!(resume_domains(None, gateway), discord, "{gateway}");
        }
        for proxy in [
            "wss://gateway-proxy.example",
            "ws://127.0.0.1:7878",
            "wss://notdiscord.gg",
            "wss://discord.gg.proxy.example",
        ] {
            assert!(resume_domains(None, proxy).is_empty(), "{proxy}");
        }
        // A list the bot set applies whatever the gateway.
        let own = vec!["proxy.example".to_owned()];
        assert_eq!(resume_domains(Some(&own), "wss://gateway.discord.gg"), own);
        assert_eq!(resume_domains(Some(&own), "ws://127.0.0.1:7878"), own);
        assert!(resume_domains(Some(&[]), "wss://gateway.discord.gg").is_empty());

        // Behind a proxy, Discord's resume URL is not followed: the resume goes through the proxy.
        let proxy = "wss://gateway-proxy.example";
        assert!(!resume_url_allowed(
            "wss://gateway-us-east1-b.discord.gg",
            proxy,
            &resume_domains(None, proxy)
        ));
        assert!(resume_url_allowed(
            "wss://gateway-proxy.example/resume",
            proxy,
            &resume_domains(None, proxy)
        ));
    }

    #[test]
    fn allow_list_entries_are_bare_host_names() {
        for good in [
            "discord.gg",
            "Discord.GG",
            "localhost",
            "127.0.0.1",
            "my-proxy.example",
        ] {
            assert_eq!(check_resume_domain(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            ".discord.gg",
            "discord.gg.",
            "a..b",
            "wss://discord.gg",
            "discord.gg/resume",
            "discord.gg:443",
            "[::1]",
            "discord gg",
            " discord.gg",
            "user@discord.gg",
            "discörd.gg",
        ] {
            assert!(check_resume_domain(bad).is_err(), "{bad:?}");
        }
        // What an empty entry used to allow: any host ending in a dot.
        assert!(!resume_url_allowed(
            "wss://evil.example.",
            "wss://gateway.discord.gg",
            &[String::new()]
        ));
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
