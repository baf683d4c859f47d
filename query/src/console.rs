//! The web console (`GET /console/`): a page and its scripts, built into
//! the binary, that read this service's JSON API from the browser (series
//! explorer, drops, anomalies, watch progress, pipeline health).
//!
//! Files are served from the fixed table [`ASSETS`] by exact name, so no
//! request path ever reaches the file system. The charting library, uPlot,
//! is vendored in `query/console/vendor/` (reproduced from the npm lockfile
//! by `query/console/vendor.sh`); nothing is fetched from outside the
//! service, and the page's content security policy forbids it.

/// One file of the console.
#[derive(Debug)]
pub struct Asset {
    /// Its name under `/console/` (empty for the page itself).
    pub name: &'static str,
    /// Its bytes.
    pub body: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its `Cache-Control`.
    pub cache_control: &'static str,
}

/// The console's own files change with the binary and carry no version in
/// their names: the browser asks again each time (a cheap local request).
const REVALIDATE: &str = "no-cache";
/// The vendored library's files change only with its version, which their
/// folder's lockfile pins; an hour spares the reloads of a session.
const VENDORED: &str = "public, max-age=3600";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the console serves.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "",
        body: include_str!("../console/index.html"),
        content_type: HTML,
        cache_control: REVALIDATE,
    },
    Asset {
        name: "console.js",
        body: include_str!("../console/console.js"),
        content_type: JS,
        cache_control: REVALIDATE,
    },
    Asset {
        name: "charts.js",
        body: include_str!("../console/charts.js"),
        content_type: JS,
        cache_control: REVALIDATE,
    },
    Asset {
        name: "console.css",
        body: include_str!("../console/console.css"),
        content_type: CSS,
        cache_control: REVALIDATE,
    },
    Asset {
        name: "uPlot.iife.min.js",
        body: include_str!("../console/vendor/uPlot.iife.min.js"),
        content_type: JS,
        cache_control: VENDORED,
    },
    Asset {
        name: "uPlot.min.css",
        body: include_str!("../console/vendor/uPlot.min.css"),
        content_type: CSS,
        cache_control: VENDORED,
    },
];

/// The page's content security policy: scripts, styles and requests only
/// from this service (uPlot sizes its elements through inline styles).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// The file called `name` (`""` or `index.html` for the page).
pub fn asset(name: &str) -> Option<&'static Asset> {
    let name = if name == "index.html" { "" } else { name };
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_files_the_table_serves() {
        let page = asset("").unwrap().body;
        for part in page.split("/console/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | '?' | '#'))
                .collect();
            assert!(asset(&name).is_some(), "index.html links {name:?}");
        }
        assert!(asset("../Cargo.toml").is_none() && asset("%2e%2e").is_none());
    }
}
