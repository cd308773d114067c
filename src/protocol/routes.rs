//! The HTTP routes (SPEC §2, §5, §6, §8): which request line means what.
//!
//! Pure: a method and a raw path in, a [`Route`] out. The loop (`server::http`) runs it.

use crate::protocol::Action;
use crate::wire::http::Method;

/// What an HTTP request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/<action>/`: the action's `data` as the body, the response frame back.
    Api(Action),
    /// `POST /api/files/upload/?channel_id=C&name=N`: the raw bytes as the body.
    Upload,
    /// `GET|HEAD /api/files/download/<file_id>`.
    Download(i64),
    /// `GET /api/servers/<server_id>/backup[?from_partition=K]`: the log as NDJSON.
    Backup(i64),
    /// `GET|HEAD /healthz`.
    Health,
    /// `GET|HEAD /metrics`.
    Metrics,
    /// `GET /ws`: the WebSocket upgrade.
    WebSocket,
    /// The path exists, the method does not (405, with these in `Allow`).
    WrongMethod(&'static str),
    NotFound,
}

/// Routes a request. Trailing slashes are optional everywhere; action names are matched
/// case-insensitively (`/api/post_message/`, `/api/POST/`).
pub fn route(method: Method, path: &str) -> Route {
    let trimmed = path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    let get = matches!(method, Method::Get | Method::Head);
    match segments.as_slice() {
        ["healthz"] if get => Route::Health,
        ["healthz"] => Route::WrongMethod("GET, HEAD"),
        ["metrics"] if get => Route::Metrics,
        ["metrics"] => Route::WrongMethod("GET, HEAD"),
        ["ws"] if method == Method::Get => Route::WebSocket,
        ["ws"] => Route::WrongMethod("GET"),
        ["api", "files", "upload"] if method == Method::Post => Route::Upload,
        ["api", "files", "upload"] => Route::WrongMethod("POST"),
        ["api", "files", "download", id] => match id.parse::<i64>() {
            Ok(id) if id > 0 && get => Route::Download(id),
            Ok(id) if id > 0 => Route::WrongMethod("GET, HEAD"),
            _ => Route::NotFound,
        },
        ["api", "servers", id, "backup"] => match id.parse::<i64>() {
            Ok(id) if id > 0 && method == Method::Get => Route::Backup(id),
            Ok(id) if id > 0 => Route::WrongMethod("GET"),
            _ => Route::NotFound,
        },
        ["api", name] => match Action::from_name(&name.to_ascii_uppercase()) {
            Some(a) if method == Method::Post => Route::Api(a),
            Some(_) => Route::WrongMethod("POST"),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_aliases() {
        assert_eq!(route(Method::Post, "/api/sync/"), Route::Api(Action::Sync));
        assert_eq!(
            route(Method::Post, "/api/post_message"),
            Route::Api(Action::PostMessage)
        );
        assert_eq!(route(Method::Post, "/api/post/"), Route::Api(Action::PostMessage));
        assert_eq!(route(Method::Post, "/api/restore/"), Route::Api(Action::RestoreHistory));
        assert_eq!(route(Method::Post, "/api/PING/"), Route::Api(Action::Ping));
        assert_eq!(route(Method::Get, "/api/sync/"), Route::WrongMethod("POST"));
        assert_eq!(route(Method::Post, "/api/nope/"), Route::NotFound);
    }

    #[test]
    fn files_backup_health() {
        assert_eq!(route(Method::Post, "/api/files/upload/"), Route::Upload);
        assert_eq!(route(Method::Get, "/api/files/upload/"), Route::WrongMethod("POST"));
        assert_eq!(route(Method::Get, "/api/files/download/42"), Route::Download(42));
        assert_eq!(route(Method::Head, "/api/files/download/42/"), Route::Download(42));
        assert_eq!(route(Method::Get, "/api/files/download/x"), Route::NotFound);
        assert_eq!(route(Method::Get, "/api/files/download/-1"), Route::NotFound);
        assert_eq!(route(Method::Get, "/api/servers/7/backup"), Route::Backup(7));
        assert_eq!(route(Method::Post, "/api/servers/7/backup"), Route::WrongMethod("GET"));
        assert_eq!(route(Method::Get, "/healthz"), Route::Health);
        assert_eq!(route(Method::Head, "/metrics"), Route::Metrics);
        assert_eq!(route(Method::Get, "/ws"), Route::WebSocket);
        assert_eq!(route(Method::Get, "/"), Route::NotFound);
        assert_eq!(route(Method::Get, "/api"), Route::NotFound);
        assert_eq!(route(Method::Options, "*"), Route::NotFound);
    }
}
