//! The kubelet's log endpoint, `GET /containerLogs/{namespace}/{pod}/{container}`, which
//! the API server calls to serve `pods/log`.
//!
//! Query parameters are those of `PodLogOptions`: `follow`, `tailLines`, `timestamps`,
//! `previous`, `sinceSeconds`, `sinceTime`, `limitBytes`. The answer is `text/plain`,
//! streamed as lines are read; failures are a status code with a one-line text message
//! (the API server turns it into a `Status`): 400 for a bad query or a missing previous
//! run, 404 for a pod or container without logs here. Authentication is the job of the
//! HTTPS server this router is mounted in.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};

use super::{LogError, LogOptions, LogStore};

/// The router serving `/containerLogs/…` from `store`.
pub fn router(store: Arc<LogStore>) -> Router {
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(store)
}

async fn container_logs(
    State(store): State<Arc<LogStore>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let opts = match parse_options(&query, Utc::now()) {
        Ok(opts) => opts,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    match store.read(&namespace, &pod, &container, opts).await {
        Ok(stream) => (
            [(header::CONTENT_TYPE, "text/plain")],
            Body::from_stream(stream),
        )
            .into_response(),
        Err(e) => {
            let code = match &e {
                LogError::InvalidName { .. } | LogError::PreviousNotFound { .. } => {
                    StatusCode::BAD_REQUEST
                }
                LogError::PodNotFound { .. } | LogError::ContainerNotFound { .. } => {
                    StatusCode::NOT_FOUND
                }
                LogError::Io { .. } => {
                    tracing::warn!(%namespace, %pod, %container, error = %e, "cannot read container logs");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            text(code, e.to_string())
        }
    }
}

fn text(code: StatusCode, message: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
}

/// Reads `PodLogOptions` from the query; `now` anchors `sinceSeconds`. The error is the
/// message for a 400.
pub fn parse_options(
    query: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<LogOptions, String> {
    let flag = |key: &str| -> Result<bool, String> {
        match query.get(key).map(String::as_str) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(format!("{key}: invalid boolean {other:?}")),
        }
    };
    let int = |key: &str| -> Result<Option<i64>, String> {
        match query.get(key).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| format!("{key}: invalid integer {v:?}")),
        }
    };
    let tail_lines = match int("tailLines")? {
        Some(n) if n < 0 => {
            return Err(format!(
                "tailLines: Invalid value: {n}: must be greater than or equal to 0"
            ))
        }
        n => n.map(|n| n as u64),
    };
    let limit_bytes = match int("limitBytes")? {
        Some(n) if n < 1 => {
            return Err(format!(
                "limitBytes: Invalid value: {n}: must be greater than 0"
            ))
        }
        n => n.map(|n| n as u64),
    };
    let since_seconds = int("sinceSeconds")?;
    let since_time = match query.get("sinceTime").map(String::as_str) {
        None | Some("") => None,
        Some(v) => Some(
            DateTime::parse_from_rfc3339(v)
                .map_err(|e| format!("sinceTime: invalid RFC 3339 time {v:?}: {e}"))?
                .with_timezone(&Utc),
        ),
    };
    let since = match (since_seconds, since_time) {
        (Some(_), Some(_)) => {
            return Err("at most one of `sinceTime` or `sinceSeconds` may be specified".into())
        }
        (Some(s), None) if s < 1 => {
            return Err(format!(
                "sinceSeconds: Invalid value: {s}: must be greater than 0"
            ))
        }
        (Some(s), None) => Some(now - chrono::Duration::seconds(s.min(i64::from(i32::MAX)))),
        (None, t) => t,
    };
    Ok(LogOptions {
        follow: flag("follow")?,
        tail_lines,
        since,
        timestamps: flag("timestamps")?,
        previous: flag("previous")?,
        limit_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use axum::body::Bytes;
    use axum::http::Request;
    use futures::StreamExt;
    use hyper::service::Service as _;
    use hyper_util::service::TowerToHyperService;

    use crate::logs::LogLimits;

    const PATIENCE: Duration = Duration::from_secs(10);

    async fn get(store: &Arc<LogStore>, uri: &str) -> Response {
        let service = TowerToHyperService::new(router(store.clone()));
        let req = Request::get(uri).body(Body::empty()).expect("request");
        match service.call(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    async fn body_text(resp: Response) -> String {
        let bytes: Bytes =
            tokio::time::timeout(PATIENCE, axum::body::to_bytes(resp.into_body(), 1 << 20))
                .await
                .expect("the body ends")
                .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn serves_logs_and_errors() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(LogStore::new(tmp.path(), LogLimits::default()));
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        log.stdout().write(b"one\ntwo\nthree\n");
        log.close();

        let resp = get(&store, "/containerLogs/ns/web/app").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(body_text(resp).await, "one\ntwo\nthree\n");

        let resp = get(
            &store,
            "/containerLogs/ns/web/app?tailLines=1&timestamps=true",
        )
        .await;
        let text = body_text(resp).await;
        assert!(
            text.ends_with("Z three\n") && text.lines().count() == 1,
            "{text}"
        );

        let resp = get(&store, "/containerLogs/ns/web/app?limitBytes=5").await;
        assert_eq!(body_text(resp).await, "one\nt");

        let resp = get(&store, "/containerLogs/ns/web/app?sinceSeconds=3600").await;
        assert_eq!(body_text(resp).await, "one\ntwo\nthree\n");

        let resp = get(&store, "/containerLogs/ns/web/nope").await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body_text(resp).await,
            "container \"nope\" in pod \"web\" has no logs on this node"
        );

        let resp = get(&store, "/containerLogs/ns/gone/app").await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body_text(resp).await,
            "pod \"ns/gone\" has no logs on this node"
        );

        let resp = get(&store, "/containerLogs/ns/web/app?previous=true").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body_text(resp).await,
            "previous terminated container \"app\" in pod \"web\" not found"
        );

        let resp = get(&store, "/containerLogs/ns/web/app?tailLines=-1").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(body_text(resp)
            .await
            .starts_with("tailLines: Invalid value: -1"));
    }

    #[tokio::test]
    async fn follow_streams_as_lines_are_written() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(LogStore::new(tmp.path(), LogLimits::default()));
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        log.stdout().write(b"hello\n");
        let resp = get(&store, "/containerLogs/ns/web/app?follow=true").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for (want, then_write) in [("hello\n", Some(b"world\n")), ("world\n", None)] {
            while !seen.contains(want) {
                let chunk = tokio::time::timeout_at(deadline, body.next())
                    .await
                    .expect("in time")
                    .expect("not ended")
                    .expect("chunk");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            if let Some(bytes) = then_write {
                log.stdout().write(bytes);
            }
        }
        log.close();
        let end = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("ends in time");
        assert!(end.is_none(), "{end:?}");
        assert_eq!(seen, "hello\nworld\n");
    }

    #[test]
    fn options() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T11:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let opts = parse_options(
            &q(&[
                ("follow", "true"),
                ("tailLines", "10"),
                ("timestamps", "1"),
                ("previous", "false"),
                ("sinceSeconds", "60"),
                ("limitBytes", "100"),
            ]),
            now,
        )
        .expect("valid");
        assert_eq!(
            opts,
            LogOptions {
                follow: true,
                tail_lines: Some(10),
                since: Some(now - chrono::Duration::seconds(60)),
                timestamps: true,
                previous: false,
                limit_bytes: Some(100),
            }
        );
        let opts =
            parse_options(&q(&[("sinceTime", "2026-11-27T10:00:00+01:00")]), now).expect("valid");
        assert_eq!(opts.since, Some(now - chrono::Duration::hours(2)));
        for bad in [
            q(&[("sinceSeconds", "0")]),
            q(&[("sinceSeconds", "5"), ("sinceTime", "2026-11-27T10:00:00Z")]),
            q(&[("sinceTime", "yesterday")]),
            q(&[("tailLines", "x")]),
            q(&[("limitBytes", "0")]),
            q(&[("follow", "yes")]),
        ] {
            assert!(parse_options(&bad, now).is_err(), "{bad:?}");
        }
    }
}
