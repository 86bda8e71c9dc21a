//! Why a group of open sockets looks like a leak: small checks over the
//! group's sockets, each giving a class and one sentence of evidence.
use super::model::{Class, SocketReport};
use crate::{
    event::{Direction, TcpState},
    socket_table::GroupCounts,
    symbolize::Frame,
};

/// Thresholds for the checks.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// An ESTABLISHED socket with no data for this long is idle.
    pub idle_s: f64,
}

/// Classes and their evidence, most telling first.
pub fn classify(
    sockets: &[SocketReport],
    direction: Direction,
    counts: GroupCounts,
    thresholds: Thresholds,
) -> Vec<(Class, String)> {
    let mut found = Vec::new();
    let total = sockets.len();

    let close_wait = sockets
        .iter()
        .filter(|s| s.state == TcpState::CloseWait)
        .count();
    if close_wait > 0 {
        found.push((
            Class::CloseWait,
            format!(
                "{close_wait} of {total} sockets are in CLOSE_WAIT: the peer closed its end, \
                 this process never called close()"
            ),
        ));
    }

    let unread: Vec<u32> = sockets
        .iter()
        .filter_map(|s| s.unread_bytes)
        .filter(|&bytes| bytes > 0)
        .collect();
    if !unread.is_empty() {
        let bytes: u64 = unread.iter().map(|&b| u64::from(b)).sum();
        found.push((
            Class::Unread,
            format!(
                "{} sockets hold {bytes} received bytes the process never read",
                unread.len()
            ),
        ));
    }

    let idle: Vec<f64> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Established)
        .filter_map(|s| s.idle_s)
        .filter(|&idle| idle >= thresholds.idle_s)
        .collect();
    if !idle.is_empty() {
        let longest = idle.iter().copied().fold(0.0, f64::max);
        found.push((
            Class::Idle,
            format!(
                "{} ESTABLISHED sockets carried no data for over {} (longest {}): \
                 kept open, never reused, never closed",
                idle.len(),
                seconds(thresholds.idle_s),
                seconds(longest)
            ),
        ));
    }

    if direction != Direction::Preexisting && counts.opened >= 2 && counts.closed == 0 {
        found.push((
            Class::Growing,
            format!(
                "this stack opened {} sockets while tracing and closed none of them",
                counts.opened
            ),
        ));
    }
    found
}

/// True for a frame of the program's own code in a Go stack: package
/// `main`, or a package whose import path starts with a domain
/// (`github.com/...`), not the standard library or the runtime.
fn is_go_user_code(symbol: &str) -> bool {
    match symbol.rfind('/') {
        Some(_) => symbol
            .split('/')
            .next()
            .is_some_and(|first| first.contains('.')),
        None => symbol.split('.').next() == Some("main"),
    }
}

/// The request site of a Go connect: the innermost frame of the program's
/// own code in its request stack, and the frame of its own code that
/// called that one (when there is one).
pub fn request_site(request: &[Frame]) -> Vec<&Frame> {
    request
        .iter()
        .filter(|f| f.symbol.as_deref().is_some_and(is_go_user_code))
        .take(2)
        .collect()
}

/// `main.fetchUser (handler.go:41) ← main.handler (handler.go:20)`.
pub fn request_site_text(request: &[Frame]) -> Option<String> {
    let site = request_site(request);
    if site.is_empty() {
        return None;
    }
    let parts: Vec<String> = site
        .iter()
        .map(|frame| {
            let symbol = frame.symbol.as_deref().unwrap_or("?");
            match (&frame.file, frame.line) {
                (Some(file), Some(line)) => {
                    let base = file.rsplit('/').next().unwrap_or(file);
                    format!("{symbol} ({base}:{line})")
                }
                _ => symbol.to_owned(),
            }
        })
        .collect();
    Some(parts.join(" \u{2190} "))
}

/// Advice that depends on the code that opened the sockets (`stack`) and,
/// for Go, the code that requested them (`request`).
pub fn hints(stack: &[Frame], request: &[Frame]) -> Vec<String> {
    let has = |needle: &str| {
        stack
            .iter()
            .filter_map(|f| f.symbol.as_deref())
            .any(|s| s.starts_with(needle))
    };
    let mut hints = Vec::new();
    // A Happy Eyeballs racer's stack ends in net's dialParallel: the
    // request stack still says net/http asked.
    let requested = request
        .iter()
        .any(|f| f.symbol.as_deref() == Some("net/http.(*Transport).queueForDial"));
    let http = requested
        || has("net/http.(*Transport).dialConn")
        || has("net/http.(*Transport).queueForDial");
    if http && let Some(site) = request_site_text(request) {
        hints.push(format!(
            "requested from {site}; each connection also pins persistConn.readLoop/writeLoop \
             goroutines. Usual causes: a Response.Body that is never closed (connections pile \
             up, CLOSE_WAIT once the server gives up) or an http.Transport (or http.Client with \
             its own Transport) created per request with keep-alives on and no IdleConnTimeout \
             (idle ESTABLISHED connections)."
        ));
    } else if http {
        hints.push(
            "Go net/http dials on its own goroutine, so this stack ends in the Transport, not in \
             your code: the caller is on another goroutine. Each of these connections also pins \
             a persistConn.readLoop and a persistConn.writeLoop goroutine. Usual causes: a \
             Response.Body that is never closed (connections pile up, CLOSE_WAIT once the server \
             gives up) or an http.Transport (or http.Client with its own Transport) created per \
             request with keep-alives on and no IdleConnTimeout (idle ESTABLISHED connections). \
             A goroutine profile (pprof) shows the callers blocked on these connections."
                .to_owned(),
        );
    }
    hints
}

/// `1.5s`, `2m30s`, `4h0m`: short, for evidence sentences.
pub fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(state: TcpState, idle_s: Option<f64>, unread: Option<u32>) -> SocketReport {
        SocketReport {
            cookie: 1,
            fd: None,
            shared_with: Box::default(),
            tid: 1,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            state,
            age_s: 10.0,
            idle_s,
            unread_bytes: unread,
            unsent_bytes: None,
        }
    }

    const T: Thresholds = Thresholds { idle_s: 30.0 };

    fn classes(found: &[(Class, String)]) -> Vec<Class> {
        found.iter().map(|(c, _)| *c).collect()
    }

    #[test]
    fn close_wait_with_unread_data() {
        let sockets = [
            socket(TcpState::CloseWait, Some(1.0), Some(120)),
            socket(TcpState::CloseWait, Some(1.0), Some(0)),
            socket(TcpState::Established, Some(1.0), None),
        ];
        let found = classify(&sockets, Direction::Connect, GroupCounts::default(), T);
        assert_eq!(classes(&found), [Class::CloseWait, Class::Unread]);
        assert_eq!(
            found[0].1,
            "2 of 3 sockets are in CLOSE_WAIT: the peer closed its end, this process never called close()"
        );
        assert_eq!(
            found[1].1,
            "1 sockets hold 120 received bytes the process never read"
        );
    }

    #[test]
    fn idle_needs_established_and_the_threshold() {
        let sockets = [
            socket(TcpState::Established, Some(14_400.0), None),
            socket(TcpState::Established, Some(29.0), None),
            socket(TcpState::CloseWait, Some(99_999.0), None),
            socket(TcpState::Established, None, None),
        ];
        let found = classify(&sockets, Direction::Connect, GroupCounts::default(), T);
        assert_eq!(classes(&found), [Class::CloseWait, Class::Idle]);
        assert_eq!(
            found[1].1,
            "1 ESTABLISHED sockets carried no data for over 30.0s (longest 4h0m): \
             kept open, never reused, never closed"
        );
    }

    #[test]
    fn growing_needs_opens_and_no_close() {
        let sockets = [socket(TcpState::Established, None, None)];
        let grew = GroupCounts {
            opened: 5,
            closed: 0,
        };
        let found = classify(&sockets, Direction::Connect, grew, T);
        assert_eq!(classes(&found), [Class::Growing]);
        let pooled = GroupCounts {
            opened: 5,
            closed: 4,
        };
        assert!(classify(&sockets, Direction::Accept, pooled, T).is_empty());
        assert!(classify(&sockets, Direction::Preexisting, grew, T).is_empty());
    }

    #[test]
    fn go_http_dial_goroutine_gets_a_hint() {
        let frame = |name: &str| Frame {
            symbol: Some(name.to_owned()),
            ..Frame::default()
        };
        let stack = [
            frame("net.(*Dialer).DialContext"),
            frame("net/http.(*Transport).dialConn"),
            frame("net/http.(*Transport).dialConnFor"),
        ];
        let hints = hints(&stack, &[]);
        assert_eq!(hints.len(), 1);
        assert!(hints[0].contains("persistConn.readLoop"));
        assert!(super::hints(&[frame("main.main")], &[]).is_empty());
    }

    #[test]
    fn the_request_site_is_the_programs_own_code() {
        let frame = |name: &str, line| Frame {
            symbol: Some(name.to_owned()),
            file: Some(format!("/src/{}.go", name.len())),
            line: Some(line),
            ..Frame::default()
        };
        let request = [
            frame("net/http.(*Transport).queueForDial", 1),
            frame("net/http.(*Client).Post", 2),
            frame("vendor/golang.org/x/net/http2.x", 3),
            frame("github.com/acme/api.(*Client).FetchUser", 41),
            frame("main.handler", 20),
            frame("main.main", 9),
            frame("runtime.main", 250),
        ];
        let site: Vec<&str> = request_site(&request)
            .iter()
            .filter_map(|f| f.symbol.as_deref())
            .collect();
        assert_eq!(
            site,
            ["github.com/acme/api.(*Client).FetchUser", "main.handler"]
        );
        assert_eq!(
            request_site_text(&request).as_deref(),
            Some(
                "github.com/acme/api.(*Client).FetchUser (39.go:41) \u{2190} main.handler (12.go:20)"
            )
        );
        assert_eq!(request_site_text(&request[..3]), None);
        // A racer's stack (net only) with a request: still net/http's hint.
        let racer = [frame("net.(*sysDialer).dialSerial", 1)];
        let hints = hints(&racer, &request);
        assert_eq!(hints.len(), 1);
        assert!(
            hints[0].starts_with("requested from github.com/acme/api"),
            "{hints:?}"
        );
        assert!(super::hints(&racer, &[]).is_empty());
    }

    #[test]
    fn formats_durations_briefly() {
        assert_eq!(seconds(1.25), "1.2s");
        assert_eq!(seconds(150.0), "2m30s");
        assert_eq!(seconds(14_400.0), "4h0m");
    }
}
