//! Leak suspects over time: a pure state machine fed with one report per
//! interval. A suspect is a group of a process's open sockets (same
//! direction, opener and stack) with at least one class. `close_wait`,
//! `unread` and `idle` come from the report as `trace` computes them;
//! `growing` is decided here, over a sliding window: the group's open count
//! never fell and ended higher across the last N intervals, and it opened
//! more than it closed meanwhile. "Opened while tracing and never closed"
//! (what `trace` calls growing) means little after a week of running.
use std::{
    collections::{HashMap, VecDeque, hash_map::DefaultHasher},
    hash::{Hash as _, Hasher as _},
};

use serde::Serialize;

use crate::{
    event::Direction,
    report::model::{Class, Group, Outlook, Report},
};

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at_s: f64,
    count: usize,
    opened: u64,
    closed: u64,
}

/// A suspect as the log line, `/leaks` and `/metrics` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suspect {
    pub pid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    pub direction: Direction,
    pub classes: Vec<Class>,
    pub count: usize,
    pub evidence: Vec<String>,
    /// The innermost user frames (symbol or address), at most five.
    pub top_frames: Vec<String>,
    /// The user function that issued the request, when known (Go).
    pub request_site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlook: Option<Outlook>,
    /// Stable for the life of the group: ties the log lines of one suspect.
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Appeared,
    Changed,
    Cleared,
}

#[derive(Debug)]
struct Tracked {
    samples: VecDeque<Sample>,
    /// What was last said about it (empty: not a suspect).
    classes: Vec<Class>,
    last: Option<Suspect>,
}

/// Suspects from one evaluation to the next.
#[derive(Debug)]
pub struct Suspects {
    /// Intervals in the window (samples kept: one more).
    intervals: usize,
    groups: HashMap<u64, Tracked>,
}

/// What one evaluation found.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Suspects now.
    pub suspects: Vec<Suspect>,
    /// Appeared, changed class, or cleared since the last evaluation.
    pub changes: Vec<(Change, Suspect)>,
    /// Processes with a growing group: pid -> open sockets gained per second
    /// over the window, summed over their growing groups.
    pub rates: HashMap<u32, f64>,
}

impl Suspects {
    pub fn new(intervals: usize) -> Suspects {
        Suspects {
            intervals: intervals.max(1),
            groups: HashMap::new(),
        }
    }

    /// Takes this interval's report (its `growing` classes are replaced by
    /// the window's verdict) at `at_s` seconds on any monotonic clock.
    pub fn evaluate(&mut self, report: &mut Report, at_s: f64) -> Evaluation {
        let mut found = Evaluation::default();
        let mut seen = std::collections::HashSet::new();
        for process in &mut report.processes {
            for group in &mut process.groups {
                let key = group_key(process.pid, group);
                seen.insert(key);
                let tracked = self.groups.entry(key).or_insert_with(|| Tracked {
                    samples: VecDeque::new(),
                    classes: Vec::new(),
                    last: None,
                });
                tracked.samples.push_back(Sample {
                    at_s,
                    count: group.count,
                    opened: group.opened_during_trace,
                    closed: group.closed_during_trace,
                });
                while tracked.samples.len() > self.intervals + 1 {
                    tracked.samples.pop_front();
                }
                set_growing(
                    group,
                    &tracked.samples,
                    self.intervals,
                    &mut found.rates,
                    process.pid,
                );
                if group.classes.is_empty() {
                    if let Some(last) = tracked.last.take() {
                        found.changes.push((Change::Cleared, last));
                    }
                    tracked.classes.clear();
                    continue;
                }
                let suspect = Suspect {
                    pid: process.pid,
                    comm: process.comm.clone(),
                    container_id: process.container_id.clone(),
                    direction: group.direction,
                    classes: group.classes.clone(),
                    count: group.count,
                    evidence: group.evidence.clone(),
                    top_frames: group.stack.iter().take(5).map(frame_text).collect(),
                    request_site: crate::report::classify::request_site_text(&group.request_stack),
                    outlook: None,
                    id: format!("{key:016x}"),
                };
                if tracked.last.is_none() {
                    found.changes.push((Change::Appeared, suspect.clone()));
                } else if tracked.classes != group.classes {
                    found.changes.push((Change::Changed, suspect.clone()));
                }
                tracked.classes.clone_from(&group.classes);
                tracked.last = Some(suspect.clone());
                found.suspects.push(suspect);
            }
        }
        // Groups gone from the report (closed, or their process exited).
        let gone: Vec<u64> = self
            .groups
            .keys()
            .filter(|key| !seen.contains(key))
            .copied()
            .collect();
        for key in gone {
            if let Some(Tracked {
                last: Some(last), ..
            }) = self.groups.remove(&key)
            {
                found.changes.push((Change::Cleared, last));
            }
        }
        found
    }

    /// Whether no group is followed (all of them left the report).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Replaces `trace`'s growing verdict with the window's.
fn set_growing(
    group: &mut Group,
    samples: &VecDeque<Sample>,
    intervals: usize,
    rates: &mut HashMap<u32, f64>,
    pid: u32,
) {
    if let Some(at) = group.classes.iter().position(|&c| c == Class::Growing) {
        group.classes.remove(at);
        if at < group.evidence.len() {
            group.evidence.remove(at);
        }
    }
    if group.direction == Direction::Preexisting || samples.len() < intervals + 1 {
        return;
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let never_fell = samples
        .iter()
        .zip(samples.iter().skip(1))
        .all(|(a, b)| b.count >= a.count);
    let opened = last.opened.saturating_sub(first.opened);
    let closed = last.closed.saturating_sub(first.closed);
    let span = last.at_s - first.at_s;
    if !(never_fell && last.count > first.count && opened > closed && span > 0.0) {
        return;
    }
    #[allow(clippy::cast_precision_loss, reason = "socket counts")]
    let per_s = (last.count - first.count) as f64 / span;
    *rates.entry(pid).or_default() += per_s;
    group.classes.push(Class::Growing);
    group.evidence.push(format!(
        "open sockets rose from {} to {} over the last {span:.0}s ({intervals} intervals): \
         opened {opened}, closed {closed}",
        first.count, last.count
    ));
}

/// The same group from one report to the next: holder, direction, opener
/// and the stack's addresses.
fn group_key(pid: u32, group: &Group) -> u64 {
    let mut hasher = DefaultHasher::new();
    pid.hash(&mut hasher);
    group.direction.hash(&mut hasher);
    group.holder_found.hash(&mut hasher);
    group.opener.as_ref().map(|o| o.pid).hash(&mut hasher);
    for frame in group.stack.iter().chain(&group.request_stack) {
        frame.address.hash(&mut hasher);
    }
    hasher.finish()
}

fn frame_text(frame: &crate::symbolize::Frame) -> String {
    match (&frame.symbol, &frame.file, frame.line) {
        (Some(symbol), Some(file), Some(line)) => format!("{symbol} ({file}:{line})"),
        (Some(symbol), ..) => symbol.clone(),
        _ => format!("{:#x}", frame.address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::ProcessReport;

    fn report(count: usize, opened: u64, closed: u64, classes: &[Class]) -> Report {
        Report {
            processes: vec![ProcessReport {
                pid: 42,
                comm: "leaky".into(),
                open: count,
                groups: vec![Group {
                    oldest_age_s: 1.0,
                    newest_age_s: 1.0,
                    states: std::collections::BTreeMap::new(),
                    classes: classes.to_vec(),
                    evidence: classes.iter().map(|c| c.name().to_owned()).collect(),
                    opened_during_trace: opened,
                    closed_during_trace: closed,
                    ..Group::for_tests(Direction::Connect, count)
                }],
                ..ProcessReport::default()
            }],
            ..Report::default()
        }
    }

    fn run(suspects: &mut Suspects, at: f64, r: &mut Report) -> Evaluation {
        suspects.evaluate(r, at)
    }

    #[test]
    fn growing_needs_a_full_window_of_rises() {
        let mut s = Suspects::new(3);
        // trace's "opened and never closed" is not enough on its own.
        let e = run(&mut s, 0.0, &mut report(2, 2, 0, &[Class::Growing]));
        assert!(e.suspects.is_empty() && e.changes.is_empty());
        run(&mut s, 10.0, &mut report(4, 4, 0, &[]));
        run(&mut s, 20.0, &mut report(6, 6, 0, &[]));
        let mut r = report(8, 8, 0, &[]);
        let e = run(&mut s, 30.0, &mut r);
        assert_eq!(r.processes[0].groups[0].classes, [Class::Growing]);
        assert_eq!(e.changes.len(), 1);
        assert_eq!(e.changes[0].0, Change::Appeared);
        assert!((e.rates[&42] - 0.2).abs() < 1e-9, "{:?}", e.rates);
        assert!(e.suspects[0].evidence[0].contains("rose from 2 to 8"));
    }

    #[test]
    fn a_pool_that_churns_or_dips_is_not_growing() {
        let mut s = Suspects::new(2);
        // Count rises but closes keep pace with opens: a pool warming up.
        run(&mut s, 0.0, &mut report(2, 10, 8, &[]));
        run(&mut s, 1.0, &mut report(3, 20, 17, &[]));
        let e = run(&mut s, 2.0, &mut report(4, 30, 36, &[]));
        assert!(e.suspects.is_empty());
        // A dip inside the window.
        let mut s = Suspects::new(2);
        run(&mut s, 0.0, &mut report(5, 5, 0, &[]));
        run(&mut s, 1.0, &mut report(4, 5, 1, &[]));
        let e = run(&mut s, 2.0, &mut report(9, 10, 1, &[]));
        assert!(e.suspects.is_empty());
    }

    #[test]
    fn appears_changes_and_clears_once_each() {
        let mut s = Suspects::new(2);
        let e = run(&mut s, 0.0, &mut report(3, 3, 0, &[Class::CloseWait]));
        assert_eq!(
            e.changes.iter().map(|c| c.0).collect::<Vec<_>>(),
            [Change::Appeared]
        );
        let e = run(&mut s, 1.0, &mut report(3, 3, 0, &[Class::CloseWait]));
        assert!(e.changes.is_empty(), "nothing new: no line");
        let e = run(
            &mut s,
            2.0,
            &mut report(3, 3, 0, &[Class::CloseWait, Class::Unread]),
        );
        assert_eq!(
            e.changes.iter().map(|c| c.0).collect::<Vec<_>>(),
            [Change::Changed]
        );
        // The process exits: its groups leave the report.
        let e = run(&mut s, 3.0, &mut Report::default());
        assert_eq!(
            e.changes.iter().map(|c| c.0).collect::<Vec<_>>(),
            [Change::Cleared]
        );
        assert_eq!(e.changes[0].1.count, 3);
        assert!(s.is_empty(), "no state kept for the exited process");
    }

    /// A Go group's suspect line names its request site.
    #[test]
    fn the_suspect_line_carries_the_request_site() {
        let mut s = Suspects::new(2);
        let mut r = report(2, 2, 0, &[Class::CloseWait]);
        r.processes[0].groups[0].request_stack = vec![crate::symbolize::Frame {
            symbol: Some("main.fetchUser".to_owned()),
            file: Some("/src/handler.go".to_owned()),
            line: Some(41),
            ..crate::symbolize::Frame::default()
        }];
        let e = run(&mut s, 0.0, &mut r);
        assert_eq!(
            e.changes[0].1.request_site.as_deref(),
            Some("main.fetchUser (handler.go:41)")
        );
        let e = run(
            &mut Suspects::new(2),
            0.0,
            &mut report(2, 2, 0, &[Class::CloseWait]),
        );
        assert_eq!(e.changes[0].1.request_site, None);
    }
}
