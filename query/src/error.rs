//! The query service's errors, each mapped to an HTTP status and a JSON body
//! that says what was wrong and what is allowed.

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter broke its rule: 400.
    #[error("parameter `{parameter}`: {rule}")]
    BadParameter {
        /// The parameter.
        parameter: String,
        /// What is allowed.
        rule: String,
    },
    /// Nothing found: 404.
    #[error("{0}")]
    NotFound(String),
    /// No route: 404.
    #[error("no such endpoint: {0}; see docs/api.md")]
    NoRoute(String),
    /// A request another site's page may have made (a `Host` that is a
    /// name this service was not told of, or an `Origin` of another
    /// host): 403.
    #[error("{0}")]
    Forbidden(String),
    /// The path exists, the method does not: 405.
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path.
        path: String,
        /// The methods the path answers.
        allowed: String,
    },
    /// A POST whose body is not declared JSON: 415. A web page of another
    /// site can send only form and `text/plain` bodies without asking
    /// first (a CORS preflight, which this service never grants).
    #[error(
        "a POST body must be JSON, sent with `Content-Type: application/json` (this one: {0})"
    )]
    UnsupportedMediaType(String),
    /// A request body over the limit: 413.
    #[error("request body over {limit_bytes} bytes")]
    BodyTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// An analyst statement the service refuses before running it (not a
    /// single SELECT, or a clause the service sets itself): 400.
    #[error("sql: {0}")]
    SqlRefused(String),
    /// ClickHouse refused or failed an analyst statement (syntax, unknown
    /// table, read-only): 400; the caller can fix the statement.
    #[error("ClickHouse refused the statement (code {code}): {message}")]
    SqlFailed {
        /// ClickHouse's error code.
        code: u32,
        /// ClickHouse's message.
        message: String,
    },
    /// An analyst statement went over a limit (rows or bytes read or
    /// returned, time): 413; narrow it (WHERE, LIMIT, fewer columns).
    #[error("over a limit (ClickHouse code {code}): {message}")]
    SqlLimit {
        /// ClickHouse's error code.
        code: u32,
        /// ClickHouse's message, which names the limit.
        message: String,
    },
    /// An answer would exceed a bound of the service: 400, with what to narrow.
    #[error("answer too large: {0}")]
    TooLarge(String),
    /// A bound of the service is full (e.g. progress lookups in
    /// ClickHouse): 503 at once; the caller retries shortly.
    #[error("busy: {0}")]
    Busy(String),
    /// ClickHouse failed: 503.
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    /// Redis failed (reads then go to ClickHouse; only a refill can fail here): 503.
    #[error("{0}")]
    State(#[from] dc_config::state_store::Error),
}

impl Error {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadParameter { .. } | Error::TooLarge(_) => 400,
            Error::NotFound(_) | Error::NoRoute(_) => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::Forbidden(_) => 403,
            Error::UnsupportedMediaType(_) => 415,
            Error::BodyTooLarge { .. } | Error::SqlLimit { .. } => 413,
            Error::SqlRefused(_) | Error::SqlFailed { .. } => 400,
            Error::Busy(_) | Error::ClickHouse(_) | Error::State(_) => 503,
        }
    }

    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadParameter { .. } => "bad_parameter",
            Error::NotFound(_) => "not_found",
            Error::NoRoute(_) => "no_route",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Forbidden(_) => "forbidden",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::SqlRefused(_) => "sql_refused",
            Error::SqlFailed { .. } => "sql_failed",
            Error::SqlLimit { .. } => "sql_limit",
            Error::TooLarge(_) => "too_large",
            Error::Busy(_) => "busy",
            Error::ClickHouse(_) => "clickhouse",
            Error::State(_) => "redis",
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Error::BadParameter { parameter, rule } => {
                serde_json::json!({"error": self.to_string(), "parameter": parameter, "allowed": rule})
            }
            Error::SqlFailed { code, .. } | Error::SqlLimit { code, .. } => {
                serde_json::json!({"error": self.to_string(), "clickhouse_code": code})
            }
            _ => serde_json::json!({"error": self.to_string()}),
        }
    }
}

/// Result of a query-service operation.
pub type Result<T> = std::result::Result<T, Error>;
