//! The agent's read-only HTTP API (axum): `/metrics`, `/leaks` (the
//! `trace` JSON contract), `/leaks.pprof`, `/healthz`. Handlers only read
//! the last evaluation, published behind a lock as one `Arc`: a request
//! never touches the tracer, and a slow client never stalls it.
use std::sync::{Arc, RwLock};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use super::suspects::Suspect;
use crate::report::{self, model::Report};

/// What one evaluation published.
#[derive(Debug, Default)]
pub struct Published {
    pub report: Report,
    pub suspects: Vec<Suspect>,
    pub metrics: String,
    /// Whether an evaluation has run yet.
    pub ready: bool,
}

pub type Shared = Arc<RwLock<Arc<Published>>>;

/// A request for an evaluation now, answered when it is published.
pub type Fresh = tokio::sync::oneshot::Sender<Arc<Published>>;

/// What the handlers hold: the last evaluation, and the way to ask the
/// agent's loop for a new one (`?fresh=1`).
#[derive(Clone)]
pub struct AppState {
    pub shared: Shared,
    pub requests: tokio::sync::mpsc::Sender<Fresh>,
}

/// Requests served at once; more wait in the accept queue.
const MAX_CONCURRENT: usize = 16;
/// Request bodies are refused beyond this (every route is a GET).
const MAX_BODY: usize = 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/leaks", get(leaks))
        .route("/leaks.pprof", get(leaks_pprof))
        .route("/healthz", get(healthz))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT,
        ))
        .with_state(state)
}

fn current(shared: &Shared) -> Arc<Published> {
    Arc::clone(
        &shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// OpenMetrics to whoever asks for it (Prometheus does), the classic
/// text format to everyone else.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let published = current(&state.shared);
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            published.metrics.clone(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            super::metrics::classic_text(&published.metrics),
        )
            .into_response()
    }
}

/// `/leaks` and `/leaks.pprof` filters.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakQuery {
    /// Seconds (a bare number) or a duration such as `5m`.
    pub min_age: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `1`: evaluate now rather than serve the last interval's result (at
    /// most one evaluation a second, whoever asks).
    pub fresh: Option<u8>,
}

/// The evaluation a query wants: the last one, or a new one.
async fn evaluation(state: &AppState, query: &LeakQuery) -> Arc<Published> {
    if query.fresh.unwrap_or(0) == 0 {
        return current(&state.shared);
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state.requests.send(reply).await.is_err() {
        return current(&state.shared);
    }
    match tokio::time::timeout(std::time::Duration::from_secs(30), answer).await {
        Ok(Ok(published)) => published,
        _ => current(&state.shared),
    }
}

async fn leaks(
    State(state): State<AppState>,
    query: Result<Query<LeakQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    match view(&evaluation(&state, &query).await.report, &query) {
        Ok(report) => match serde_json::to_vec_pretty(&report) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
        },
        Err(err) => (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    }
}

async fn leaks_pprof(
    State(state): State<AppState>,
    query: Result<Query<LeakQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    let published = evaluation(&state, &query).await;
    let encoded = view(&published.report, &query).and_then(|r| report::pprof::encode(&r));
    match encoded {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(err) => (StatusCode::BAD_REQUEST, format!("{err:#}\n")).into_response(),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    if current(&state.shared).ready {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

/// The part of `report` a query asks for: processes by pid and comm,
/// sockets at least `min_age` old (counts follow what is left).
pub fn view(report: &Report, query: &LeakQuery) -> anyhow::Result<Report> {
    let min_age_s = match &query.min_age {
        None => 0.0,
        Some(text) => crate::cli::parse_duration_or_zero(text)
            .map_err(|err| anyhow::anyhow!("min_age: {err}"))?
            .as_secs_f64(),
    };
    let mut out = report.clone();
    out.processes.retain(|p| {
        query.pid.is_none_or(|pid| pid == p.pid) && query.comm.as_ref().is_none_or(|c| *c == p.comm)
    });
    for process in &mut out.processes {
        for group in &mut process.groups {
            if min_age_s > 0.0 {
                group.sockets.retain(|s| s.age_s >= min_age_s);
                group.count = group.sockets.len();
                let mut states = std::collections::BTreeMap::new();
                for socket in &group.sockets {
                    *states.entry(socket.state).or_default() += 1;
                }
                group.states = states;
                if let Some(newest) = group.sockets.last() {
                    group.newest_age_s = newest.age_s;
                }
            }
        }
        process.groups.retain(|g| g.count > 0);
        process.open = process.groups.iter().map(|g| g.count).sum();
    }
    out.processes.retain(|p| p.open > 0);
    if query.pid.is_some() || query.comm.is_some() || min_age_s > 0.0 {
        let mut cookies: Vec<u64> = out
            .processes
            .iter()
            .flat_map(|p| {
                p.groups
                    .iter()
                    .flat_map(|g| g.sockets.iter().map(|s| s.cookie))
            })
            .collect();
        cookies.sort_unstable();
        cookies.dedup();
        out.open_sockets = cookies.len();
        out.hidden_groups = 0;
        out.hidden_sockets = 0;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Direction, TcpState},
        report::model::{Group, ProcessReport, SocketReport},
    };

    fn socket(cookie: u64, age_s: f64) -> SocketReport {
        SocketReport {
            cookie,
            fd: Some(3),
            shared_with: Box::default(),
            tid: 1,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            state: TcpState::CloseWait,
            age_s,
            idle_s: None,
            unread_bytes: None,
            unsent_bytes: None,
        }
    }

    fn process(pid: u32, comm: &str, sockets: Vec<SocketReport>) -> ProcessReport {
        let count = sockets.len();
        ProcessReport {
            pid,
            comm: comm.into(),
            open: count,
            groups: vec![Group {
                sockets,
                ..Group::for_tests(Direction::Connect, count)
            }],
            ..ProcessReport::default()
        }
    }

    fn report() -> Report {
        Report {
            open_sockets: 3,
            processes: vec![
                process(1, "a", vec![socket(10, 30.0), socket(11, 2.0)]),
                process(2, "b", vec![socket(12, 1.0)]),
            ],
            ..Report::default()
        }
    }

    fn query(query: &LeakQuery) -> anyhow::Result<Report> {
        view(&report(), query)
    }

    #[test]
    fn filters_by_pid_comm_and_age_and_recounts() {
        let by_pid = query(&LeakQuery {
            pid: Some(2),
            ..LeakQuery::default()
        })
        .unwrap();
        assert_eq!(by_pid.processes.len(), 1);
        assert_eq!(by_pid.open_sockets, 1);
        let by_comm = query(&LeakQuery {
            comm: Some("a".into()),
            ..LeakQuery::default()
        })
        .unwrap();
        assert_eq!((by_comm.processes[0].pid, by_comm.open_sockets), (1, 2));
        let old = query(&LeakQuery {
            min_age: Some("10s".into()),
            ..LeakQuery::default()
        })
        .unwrap();
        assert_eq!(old.processes.len(), 1);
        assert_eq!(old.processes[0].open, 1);
        assert_eq!(old.processes[0].groups[0].states[&TcpState::CloseWait], 1);
        assert_eq!(old.open_sockets, 1);
        let all = view(&report(), &LeakQuery::default()).unwrap();
        assert_eq!(all.open_sockets, 3);
        assert!(
            view(
                &report(),
                &LeakQuery {
                    min_age: Some("soon".into()),
                    ..LeakQuery::default()
                }
            )
            .is_err()
        );
    }
}
