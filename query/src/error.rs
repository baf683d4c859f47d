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
            Error::BadParameter { .. } => 400,
            Error::NotFound(_) | Error::NoRoute(_) => 404,
            Error::ClickHouse(_) | Error::State(_) => 503,
        }
    }

    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadParameter { .. } => "bad_parameter",
            Error::NotFound(_) => "not_found",
            Error::NoRoute(_) => "no_route",
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
            _ => serde_json::json!({"error": self.to_string()}),
        }
    }
}

/// Result of a query-service operation.
pub type Result<T> = std::result::Result<T, Error>;
