//! `PROXY_ROUTES`: which path prefixes go to which origin. Only these origins are ever
//! fetched: a request's `Host` or an absolute-form target never chooses one (no open proxy).

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
}

/// Every route, longest prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Parses `PREFIX=URL[,PREFIX=URL…]`: each prefix starts with `/` and is given once, each
    /// URL is `http` or `https` with a host and no query or fragment. The error says what is
    /// wrong with which entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut routes: Vec<Route> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
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
            let base = Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
            if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none_or(str::is_empty) {
                return Err(format!("`{url}` is not an http:// or https:// URL with a host"));
            }
            if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
                return Err(format!(
                    "`{url}` has a query, fragment or user info; give a base URL only"
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
            });
        }
        if routes.is_empty() {
            return Err("no route is given".to_owned());
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
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
        let routes =
            Routes::parse("/=http://all:1, /api=http://api:2/v1/, /api/orders=https://orders").unwrap();
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
        let bare = Routes::parse("/api=http://o:1/base").unwrap();
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
            assert!(Routes::parse(bad).is_err(), "{bad}");
        }
        for bad in [
            "",
            ",",
            " ",
            "/../x=http://x",
            "/api//v=http://x",
            "/a%2e=http://x",
        ] {
            assert!(Routes::parse(bad).is_err(), "{bad:?}");
        }
    }
}
