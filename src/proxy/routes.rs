//! `PROXY_ROUTES`: which path prefixes go to which origin, and each route's options (query
//! normalisation, TTL bounds, stale windows, `Set-Cookie`, headers of its own for the origin).
//! Only these origins are ever fetched: a request's `Host` or an absolute-form target never
//! chooses one (no open proxy).

use std::borrow::Cow;

use http::{HeaderName, HeaderValue};
use url::Url;

/// One route: requests whose path is `prefix` or under it go to `base` + the rest of the path
/// + the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The path prefix without a trailing slash (`""` for `/`): matched on whole segments.
    pub prefix: String,
    /// The origin's base URL (no query, no fragment); its path is kept without a trailing slash.
    pub base: Url,
    /// The route's name in metrics, spans and cache keys: its prefix as written (`/` for all).
    pub name: String,
    /// What the route's options (after `;`) change.
    pub options: RouteOptions,
    /// The route's number (its place, longest prefix first): where it is counted.
    pub index: usize,
}

/// A route's options: `;`-separated `name=value` after its base URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteOptions {
    /// `query=`: how the query is normalised before it keys the cache and goes to the origin.
    pub query: QueryRule,
    /// `query_drop=a|b|utm_*`: parameters removed (a trailing `*` matches a prefix), before the
    /// key is made and the origin is asked (so the key is always what the origin was asked).
    pub query_drop: Vec<String>,
    /// `ttl_min=` / `ttl_max=` (seconds): bounds on a stored answer's freshness lifetime, over
    /// what its headers (or the heuristic) say; `no-cache`, `no-store` and `private` still hold.
    pub ttl_min: Option<u64>,
    /// See `ttl_min`.
    pub ttl_max: Option<u64>,
    /// `stale_while_revalidate=` (seconds): replaces the origin's directive of that name.
    pub stale_while_revalidate: Option<u64>,
    /// `stale_if_error=` (seconds): replaces the origin's directive of that name.
    pub stale_if_error: Option<u64>,
    /// `set_cookie=`: what happens to a storable answer with `Set-Cookie`.
    pub set_cookie: SetCookie,
    /// `header=Name:value` and `header_from_env=Name:VAR`: sent to the origin on every request,
    /// in place of the client's header of that name (an API key or token of the cache's own).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// How a route's query is normalised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueryRule {
    /// `keep` (the default): as the client sent it.
    #[default]
    Keep,
    /// `sort`: parameters in order (by name, then value), empty ones dropped; `?b=2&a=1` and
    /// `?a=1&b=2` are one resource.
    Sort,
    /// `drop`: the query is removed (the origin never sees one).
    Drop,
}

/// What a route does with a storable answer that sets a cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SetCookie {
    /// `pass` (the default): not stored; the answer goes to the one client that asked.
    #[default]
    Pass,
    /// `strip`: stored without its `Set-Cookie` headers; the client whose request fetched it
    /// gets them, later hits do not.
    Strip,
    /// `store`: stored with them, as RFC 9111 allows (every client gets the same cookie): for
    /// origins whose cookies carry nothing about a user.
    Store,
}

/// Every route, longest prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Parses `PREFIX=URL[,PREFIX=URL…]`: each prefix starts with `/` and is given once, each
    /// URL is `http` or `https` with a host and no query or fragment. The error says what is
    /// wrong with which entry.
    ///
    /// Options follow the URL, each after a `;`: `query=keep|sort|drop`, `query_drop=a|b|p_*`,
    /// `ttl_min=SECS`, `ttl_max=SECS`, `stale_while_revalidate=SECS`, `stale_if_error=SECS`,
    /// `set_cookie=pass|strip|store`, `header=Name:value`, `header_from_env=Name:VAR` (the value
    /// read from the variable `VAR` through `env`, for secrets). Errors never repeat a header's
    /// value.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut routes: Vec<Route> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut pieces = item.split(';').map(str::trim);
            let item = pieces.next().unwrap_or_default();
            let options = RouteOptions::parse(pieces, &env)?;
            let (prefix, url) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not PATH_PREFIX=ORIGIN_BASE_URL"))?;
            let (prefix, url) = (prefix.trim(), url.trim());
            if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ', '%', '\\']) {
                return Err(format!(
                    "`{prefix}` is not a path prefix (it must start with /, without ?, #, % or \\)"
                ));
            }
            let segments: Vec<&str> = prefix.trim_end_matches('/').split('/').skip(1).collect();
            if prefix != "/" && segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
                return Err(format!("`{prefix}` has an empty, `.` or `..` segment"));
            }
            let shown = without_user_info(url);
            let base = Url::parse(url).map_err(|e| format!("`{shown}` is not a URL: {e}"))?;
            if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none_or(str::is_empty) {
                return Err(format!("`{shown}` is not an http:// or https:// URL with a host"));
            }
            if base.query().is_some()
                || base.fragment().is_some()
                || !base.username().is_empty()
                || base.password().is_some()
            {
                return Err(format!(
                    "`{shown}` has a query, fragment or user info; give a base URL only (a credential goes in header_from_env)"
                ));
            }
            let trimmed = prefix.trim_end_matches('/').to_owned();
            if routes.iter().any(|r| r.prefix == trimmed) {
                return Err(format!("the prefix `{prefix}` is given twice"));
            }
            routes.push(Route {
                prefix: trimmed,
                base,
                name: prefix.to_owned(),
                options,
                index: 0,
            });
        }
        if routes.is_empty() {
            return Err("no route is given".to_owned());
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        for (i, r) in routes.iter_mut().enumerate() {
            r.index = i;
        }
        Ok(Routes(routes))
    }

    /// Whether there is no route (the service is then exactly the `/items` service).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The routes, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.iter()
    }

    /// The route for `path` (the longest prefix that matches whole segments) and the rest of
    /// the path after it.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Route, &'p str)> {
        self.0.iter().find_map(|r| {
            let rest = path.strip_prefix(r.prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((r, rest))
        })
    }
}

/// `PROXY_ROUTES` with what may be a secret hidden, for messages that repeat it: the values of
/// `header=` options and the user info of URLs. (A `header=` value holding `,` or `;` is cut
/// there by the parser, so its tail cannot be told from the rest: secrets belong in
/// `header_from_env`, which names a variable, never its value.)
pub fn redacted(text: &str) -> String {
    text.split(',')
        .map(|item| {
            item.split(';')
                .map(|piece| match piece.split_once('=') {
                    Some((name, v)) if name.trim().to_ascii_lowercase().contains("header") => {
                        format!("header={}:…", v.split(':').next().unwrap_or_default().trim())
                    }
                    _ => without_user_info(piece),
                })
                .collect::<Vec<_>>()
                .join(";")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` with the user info of a URL in it (`//user:password@`) replaced by `…`.
fn without_user_info(text: &str) -> String {
    match text.find("//") {
        Some(start) => {
            let rest = &text[start + 2..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{}//…@{}", &text[..start], &rest[at + 1..]),
                None => text.to_owned(),
            }
        }
        None => text.to_owned(),
    }
}

impl RouteOptions {
    /// The options after a route's URL, each `name=value`.
    fn parse<'a>(
        pieces: impl Iterator<Item = &'a str>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut o = RouteOptions::default();
        let seconds = |name: &str, v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|s| *s <= 10 * 365 * 86_400)
                .ok_or_else(|| format!("`{name}` takes whole seconds (0 to ten years), not `{v}`"))
        };
        for piece in pieces.filter(|p| !p.is_empty()) {
            let (name, value) = piece
                .split_once('=')
                .map(|(n, v)| (n.trim(), v.trim()))
                .ok_or_else(|| format!("the route option `{piece}` is not name=value"))?;
            match name {
                "query" => {
                    o.query = match value {
                        "keep" => QueryRule::Keep,
                        "sort" => QueryRule::Sort,
                        "drop" => QueryRule::Drop,
                        _ => return Err(format!("`query` is keep, sort or drop, not `{value}`")),
                    }
                }
                "query_drop" => {
                    for p in value.split('|').map(str::trim) {
                        let bare = p.strip_suffix('*').unwrap_or(p);
                        if p.is_empty() || bare.contains(['*', '&', '=', '#', ' ']) {
                            return Err(format!(
                                "`query_drop` lists parameter names separated by | (a trailing * matches a prefix), not `{value}`"
                            ));
                        }
                        o.query_drop.push(p.to_owned());
                    }
                }
                "ttl_min" => o.ttl_min = Some(seconds(name, value)?),
                "ttl_max" => o.ttl_max = Some(seconds(name, value)?),
                "stale_while_revalidate" => o.stale_while_revalidate = Some(seconds(name, value)?),
                "stale_if_error" => o.stale_if_error = Some(seconds(name, value)?),
                "set_cookie" => {
                    o.set_cookie = match value {
                        "pass" => SetCookie::Pass,
                        "strip" => SetCookie::Strip,
                        "store" => SetCookie::Store,
                        _ => return Err(format!("`set_cookie` is pass, strip or store, not `{value}`")),
                    }
                }
                "header" | "header_from_env" => {
                    let (h, v) = value
                        .split_once(':')
                        .map(|(h, v)| (h.trim(), v.trim()))
                        .ok_or_else(|| {
                            format!(
                                "`{name}` is Name:{}",
                                if name == "header" { "value" } else { "VAR" }
                            )
                        })?;
                    let h = HeaderName::try_from(h.to_ascii_lowercase())
                        .map_err(|_| format!("`{name}`: `{h}` is not a header name"))?;
                    if super::hop_by_hop(&h, &[])
                        || h == http::header::HOST
                        || h == http::header::CONTENT_LENGTH
                    {
                        return Err(format!("`{name}`: `{h}` is not a header a route may set"));
                    }
                    let v = if name == "header" {
                        if v.is_empty() {
                            return Err(format!("`header`: the value for `{h}` is empty"));
                        }
                        v.to_owned()
                    } else {
                        env(v).filter(|s| !s.is_empty()).ok_or_else(|| {
                            format!(
                                "`header_from_env` names the variable `{v}`, which is not set (or not UTF-8)"
                            )
                        })?
                    };
                    let mut v = HeaderValue::from_str(&v)
                        .map_err(|_| format!("`{name}`: the value for `{h}` is not a valid header value"))?;
                    v.set_sensitive(true);
                    if o.headers.iter().any(|(n, _)| *n == h) {
                        return Err(format!("`{h}` is set twice"));
                    }
                    o.headers.push((h, v));
                }
                _ => {
                    return Err(format!(
                        "`{name}` is not a route option (query, query_drop, ttl_min, ttl_max, stale_while_revalidate, stale_if_error, set_cookie, header, header_from_env)"
                    ));
                }
            }
        }
        if let (Some(min), Some(max)) = (o.ttl_min, o.ttl_max)
            && min > max
        {
            return Err(format!("ttl_min ({min}) is above ttl_max ({max})"));
        }
        Ok(o)
    }

    /// A lifetime (seconds) within `ttl_min` and `ttl_max`.
    pub fn bound_lifetime(&self, lifetime: u64) -> u64 {
        let l = self.ttl_min.map_or(lifetime, |m| lifetime.max(m));
        self.ttl_max.map_or(l, |m| l.min(m))
    }

    /// `query` as this route normalises it; `None` when nothing is left of it.
    pub fn query<'q>(&self, query: Option<&'q str>) -> Option<Cow<'q, str>> {
        let q = query?;
        if self.query == QueryRule::Drop {
            return None;
        }
        if self.query == QueryRule::Keep && self.query_drop.is_empty() {
            return Some(Cow::Borrowed(q));
        }
        let dropped = |pair: &str| {
            let name = pair.split('=').next().unwrap_or_default();
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            self.query_drop.iter().any(|d| match d.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == d.as_str(),
            })
        };
        let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty() && !dropped(p)).collect();
        if self.query == QueryRule::Sort {
            pairs.sort_by(|a, b| {
                let name = |p: &'q str| p.split('=').next().unwrap_or_default();
                name(a).cmp(name(b)).then(a.cmp(b))
            });
        }
        (!pairs.is_empty()).then(|| Cow::Owned(pairs.join("&")))
    }
}

impl Route {
    /// The origin URL for `rest` of the path and `query`: the base's path joined to it.
    pub fn upstream(&self, rest: &str, query: Option<&str>) -> String {
        // The base as given for the prefix itself (`/api` → `http://o/v1`, no slash added), the
        // base joined to the rest below it.
        let base = if rest.is_empty() {
            self.base.as_str()
        } else {
            self.base.as_str().trim_end_matches('/')
        };
        let mut url = String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
        url.push_str(base);
        url.push_str(rest);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_on_whole_segments_wins() {
        let routes = Routes::parse(
            "/=http://all:1, /api=http://api:2/v1/, /api/orders=https://orders",
            no_env,
        )
        .unwrap();
        let (r, rest) = routes.find("/api/orders/7").unwrap();
        assert_eq!((r.name.as_str(), rest), ("/api/orders", "/7"));
        assert_eq!(r.upstream(rest, Some("a=1")), "https://orders/7?a=1");
        let (r, rest) = routes.find("/api/x").unwrap();
        assert_eq!(r.upstream(rest, None), "http://api:2/v1/x");
        let (r, rest) = routes.find("/apix").unwrap();
        assert_eq!((r.name.as_str(), rest), ("/", "/apix"));
        assert_eq!(r.upstream(rest, None), "http://all:1/apix");
        let (r, rest) = routes.find("/api").unwrap();
        assert_eq!(r.upstream(rest, None), "http://api:2/v1/");
        let bare = Routes::parse("/api=http://o:1/base", no_env).unwrap();
        let (r, rest) = bare.find("/api").unwrap();
        assert_eq!(
            r.upstream(rest, Some("x=1")),
            "http://o:1/base?x=1",
            "no slash added"
        );
    }

    #[test]
    fn bad_routes_are_refused_with_the_reason() {
        for bad in [
            "api=http://x",
            "/a=ftp://x",
            "/a=http://x?q=1",
            "/a=http://x,/a/=http://y",
            "/a",
            "/a=http://u:p@x",
        ] {
            assert!(Routes::parse(bad, no_env).is_err(), "{bad}");
        }
        for bad in [
            "",
            ",",
            " ",
            "/../x=http://x",
            "/api//v=http://x",
            "/a%2e=http://x",
        ] {
            assert!(Routes::parse(bad, no_env).is_err(), "{bad:?}");
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn what_may_be_a_secret_is_hidden_when_the_setting_is_repeated() {
        for (text, secret) in [
            ("/a=http://x; header = X-K:sekrit1;bogus=1", "sekrit1"),
            ("/a=http://x;header=Authorization:Bearer sekrit2", "sekrit2"),
            ("/a=http://u:sekrit3@x/v1", "sekrit3"),
            ("/a=https://sekrit4@x", "sekrit4"),
        ] {
            let shown = redacted(text);
            assert!(!shown.contains(secret), "{shown}");
            if let Err(error) = Routes::parse(text, no_env) {
                assert!(!error.contains(secret), "{error}");
            }
        }
        assert_eq!(redacted("/a=http://x/v1;query=sort"), "/a=http://x/v1;query=sort");
        assert!(
            Routes::parse("/a=http://x;header=X-K:", no_env).is_err(),
            "an empty value"
        );
    }

    #[test]
    fn route_options_are_read_and_refused_with_the_reason() {
        let env = |name: &str| (name == "API_TOKEN").then(|| "Bearer s3cret".to_owned());
        let routes = Routes::parse(
            "/a=http://a:1/v1; query=sort; query_drop=utm_*|fbclid; ttl_min=5; ttl_max=60; \
             stale_while_revalidate=30; stale_if_error=300; set_cookie=strip; \
             header=X-Team:search; header_from_env=Authorization:API_TOKEN, /b=http://b:2",
            env,
        )
        .unwrap();
        let (a, _) = routes.find("/a/x").unwrap();
        let o = &a.options;
        assert_eq!(
            (o.query, o.ttl_min, o.ttl_max),
            (QueryRule::Sort, Some(5), Some(60))
        );
        assert_eq!(
            (o.stale_while_revalidate, o.stale_if_error),
            (Some(30), Some(300))
        );
        assert_eq!(o.set_cookie, SetCookie::Strip);
        assert_eq!(o.headers[1].0, http::header::AUTHORIZATION);
        assert_eq!(o.headers[1].1, "Bearer s3cret");
        assert!(o.headers[1].1.is_sensitive());
        assert_eq!(
            (o.bound_lifetime(0), o.bound_lifetime(30), o.bound_lifetime(600)),
            (5, 30, 60)
        );
        assert_eq!(
            o.query(Some("z=1&utm_source=x&b=2&&a=9&fbclid=1&a=1")).as_deref(),
            Some("a=1&a=9&b=2&z=1")
        );
        assert_eq!(o.query(Some("utm_medium=1")), None);
        let (b, _) = routes.find("/b").unwrap();
        assert_eq!(b.options, RouteOptions::default());
        assert_eq!(b.options.query(Some("b=2&a=1")).as_deref(), Some("b=2&a=1"));
        for bad in [
            "/a=http://a;query=shuffle",
            "/a=http://a;ttl_min=-1",
            "/a=http://a;ttl_min=9;ttl_max=3",
            "/a=http://a;set_cookie=eat",
            "/a=http://a;header=Connection:close",
            "/a=http://a;header=Bad Name:x",
            "/a=http://a;header_from_env=Authorization:MISSING",
            "/a=http://a;header=X:1;header=x:2",
            "/a=http://a;colour=blue",
            "/a=http://a;query_drop=a*b",
            "/a=http://a;nonsense",
        ] {
            let e = Routes::parse(bad, env).unwrap_err();
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
        assert!(
            Routes::parse("/a=http://a;header=X:\u{1}", env)
                .unwrap_err()
                .contains("valid header value")
        );
    }
}
