//! Credential-free renderings of broker and endpoint URLs, for `Debug`,
//! logs and error messages.

/// Renders `url` without anything that may be a secret: userinfo becomes
/// `***@`, and a path, query or fragment becomes `/***`. A path that is only
/// a database number (`redis://host:6379/2`) is kept. When the userinfo
/// itself holds `@`, `/`, `?` or `#` unescaped, only the scheme is shown.
///
/// ```text
/// redis://:hunter2@cache:6379/0          -> redis://***@cache:6379/0
/// https://hooks.example/T0/B0/secret?x=1 -> https://hooks.example/***
/// ```
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsed url>".to_owned();
    };
    // A password may hold an unescaped `/`, `?`, `#` or `@`, and then where
    // the userinfo ends is anyone's guess: show nothing past the scheme.
    let ats = rest.matches('@').count();
    let first_at = rest.find('@');
    let first_delim = rest.find(['/', '?', '#']);
    if ats > 1 || matches!((first_at, first_delim), (Some(at), Some(delim)) if delim < at) {
        return format!("{scheme}://***");
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let keep_tail = tail.is_empty()
        || tail == "/"
        || tail
            .strip_prefix('/')
            .is_some_and(|db| db.bytes().all(|b| b.is_ascii_digit()));
    let tail = if keep_tail { tail } else { "/***" };
    format!("{scheme}://{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn secrets_never_survive() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("redis://:hunter2@cache:6379/3", "redis://***@cache:6379/3"),
            ("redis://user:p%40ss@cache/0", "redis://***@cache/0"),
            ("amqp://user:pa/ss@host/%2f", "amqp://***"),
            ("amqp://user:p?a#s@s@host:5672", "amqp://***"),
            ("https://u:a@b@hooks.example/a@b?token=a@b", "https://***"),
            ("redis://cache:6379/0?password=x", "redis://cache:6379/***"),
            ("unix:///run/redis.sock?pass=x", "unix:///***"),
            (
                "https://hooks.example/services/T0/B0/secret",
                "https://hooks.example/***",
            ),
            (
                "https://u:p@a.example:8443/x?k=v#f",
                "https://***@a.example:8443/***",
            ),
            ("http://a.example?token=x", "http://a.example/***"),
            ("not a url with hunter2", "<unparsed url>"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
