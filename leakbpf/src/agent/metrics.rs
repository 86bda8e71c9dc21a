//! `/metrics`: the agent's state in the Prometheus (OpenMetrics) text
//! format, through the prometheus-client crate. A registry is built afresh
//! at every evaluation, so a process that exited leaves no series behind.
//! Per-process series are bounded: the `top_k` processes with the most open
//! sockets get their own, the rest are summed under `pid="other"`.
use std::sync::atomic::AtomicU64;
use std::{borrow::Cow, collections::BTreeMap};

use anyhow::Result;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::suspects::Suspect;
use crate::{completeness::LostCounts, event::Event, report::model::Report};

/// The agent's own counters, besides the report.
#[derive(Clone, Debug, Default)]
pub struct AgentStats {
    /// Lifecycle events read, by kind (indexed like [`Event::KINDS`]).
    pub events: [u64; Event::KINDS.len()],
    pub lost: LostCounts,
    pub tracked_sockets: usize,
    pub tracked_processes: usize,
    /// Entries in the kernel's stack map, and those pruned so far.
    pub kernel_stacks: usize,
    pub stacks_pruned: u64,
    /// Symbolized user stacks cached in user space.
    pub cached_stacks: usize,
    /// Sockets not tracked because the table was at its cap.
    pub evicted_sockets: u64,
    /// Symbol caches dropped at their caps (blazesym restarts, Go tables).
    pub evicted_symbol_caches: u64,
    /// Reconciliation with the kernel's socket tables: tracked sockets the
    /// kernel no longer had (their close was lost), and open sockets no hook
    /// reported (their open was lost).
    pub reconciled_removed: u64,
    pub reconciled_added: u64,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabels {
    pid: String,
    comm: String,
    container: String,
    direction: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    comm: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FixLabels {
    fix: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The exposition of one evaluation.
pub fn render(
    report: &Report,
    suspects: &[Suspect],
    stats: &AgentStats,
    top_k: usize,
    const_labels: &BTreeMap<String, String>,
) -> Result<String> {
    // The crate writes label values as they are: escape them here.
    let mut registry = Registry::with_prefix_and_labels(
        "leakbpf",
        const_labels
            .iter()
            .map(|(k, v)| (Cow::Owned(k.clone()), Cow::Owned(escape_label_value(v)))),
    );
    let open = Family::<SocketLabels, Gauge>::default();
    registry.register(
        "open_sockets",
        "Open TCP sockets held, by process (top K by count; the rest as pid=\"other\"), container, direction and state",
        open.clone(),
    );
    let mut ranked: Vec<_> = report.processes.iter().collect();
    ranked.sort_by(|a, b| b.open.cmp(&a.open).then(a.pid.cmp(&b.pid)));
    for (rank, process) in ranked.iter().enumerate() {
        let (pid, comm, container) = if rank < top_k {
            (
                process.pid.to_string(),
                escape_label_value(&process.comm),
                container_label(process.container_id.as_deref()),
            )
        } else {
            ("other".to_owned(), "other".to_owned(), String::new())
        };
        for group in &process.groups {
            for (state, count) in &group.states {
                let labels = SocketLabels {
                    pid: pid.clone(),
                    comm: comm.clone(),
                    container: container.clone(),
                    direction: group.direction.as_str().to_owned(),
                    state: state.name().to_owned(),
                };
                open.get_or_create(&labels).inc_by(to_i64(*count));
            }
        }
    }

    let by_class = Family::<ClassLabels, Gauge>::default();
    registry.register(
        "suspects",
        "Leak suspects (groups of a process's sockets) by class",
        by_class.clone(),
    );
    for class in ["close_wait", "unread", "idle", "growing"] {
        // Zero series for classes nobody has: a dashboard sees 0, not "no data".
        drop(by_class.get_or_create(&ClassLabels {
            class: class.to_owned(),
        }));
    }
    for suspect in suspects {
        for class in &suspect.classes {
            by_class
                .get_or_create(&ClassLabels {
                    class: class.name().to_owned(),
                })
                .inc();
        }
    }

    outlook_series(&mut registry, report, &ranked, top_k);
    agent_series(&mut registry, report, stats);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

fn outlook_series(
    registry: &mut Registry,
    report: &Report,
    ranked: &[&crate::report::model::ProcessReport],
    top_k: usize,
) {
    let _ = report;
    let rate = Family::<ProcessLabels, FloatGauge>::default();
    let fd_left = Family::<ProcessLabels, FloatGauge>::default();
    let mem_left = Family::<ProcessLabels, FloatGauge>::default();
    registry.register(
        "leak_rate_sockets_per_hour",
        "Open sockets gained per hour over the window, for processes with a growing suspect",
        rate.clone(),
    );
    registry.register(
        "fd_exhaustion_seconds",
        "Predicted seconds until the process reaches its open-file limit at its leak rate",
        fd_left.clone(),
    );
    registry.register(
        "memory_exhaustion_seconds",
        "Predicted seconds until the process's memory cgroup reaches memory.max at the window's rate",
        mem_left.clone(),
    );
    for process in ranked.iter().take(top_k) {
        let Some(outlook) = &process.outlook else {
            continue;
        };
        let labels = ProcessLabels {
            pid: process.pid.to_string(),
            comm: escape_label_value(&process.comm),
            container: container_label(process.container_id.as_deref()),
        };
        rate.get_or_create(&labels).set(outlook.leak_rate_per_hour);
        if let Some(s) = outlook.fd_exhaustion_s {
            fd_left.get_or_create(&labels).set(s);
        }
        if let Some(s) = outlook.memory_exhaustion_s {
            mem_left.get_or_create(&labels).set(s);
        }
    }
}

fn agent_series(registry: &mut Registry, report: &Report, stats: &AgentStats) {
    loss_series(registry, stats);
    let events = Family::<KindLabels, Counter>::default();
    registry.register(
        "events",
        "Lifecycle events read from the kernel, by kind",
        events.clone(),
    );
    for (kind, count) in Event::KINDS.iter().zip(&stats.events) {
        events
            .get_or_create(&KindLabels {
                kind: (*kind).to_owned(),
            })
            .inc_by(*count);
    }
    let tracked = Family::<WhatLabels, Gauge>::default();
    registry.register(
        "tracked",
        "What the agent holds in memory: sockets, processes, kernel stack-map entries, symbolized stacks",
        tracked.clone(),
    );
    for (what, count) in [
        ("sockets", stats.tracked_sockets),
        ("processes", stats.tracked_processes),
        ("kernel_stacks", stats.kernel_stacks),
        ("symbolized_stacks", stats.cached_stacks),
    ] {
        tracked
            .get_or_create(&WhatLabels {
                what: what.to_owned(),
            })
            .set(to_i64(count));
    }
    let evicted = Family::<WhatLabels, Counter>::default();
    registry.register(
        "evictions",
        "Entries dropped at a cap (sockets, symbol caches) or pruned when nothing referred to them (kernel stacks)",
        evicted.clone(),
    );
    for (what, count) in [
        ("sockets", stats.evicted_sockets),
        ("kernel_stacks", stats.stacks_pruned),
        ("symbol_caches", stats.evicted_symbol_caches),
    ] {
        evicted
            .get_or_create(&WhatLabels {
                what: what.to_owned(),
            })
            .inc_by(count);
    }
    let fixes = Family::<FixLabels, Counter>::default();
    registry.register(
        "reconciliation_fixes",
        "Tracked sockets the kernel no longer had (removed) and open sockets never seen opening (added)",
        fixes.clone(),
    );
    for (fix, count) in [
        ("removed", stats.reconciled_removed),
        ("added", stats.reconciled_added),
    ] {
        fixes
            .get_or_create(&FixLabels {
                fix: fix.to_owned(),
            })
            .inc_by(count);
    }
    let complete = Gauge::<i64>::default();
    complete.set(i64::from(report.complete));
    registry.register(
        "complete",
        "1 when the current state is exact (nothing lost since the last reconciliation), else 0",
        complete,
    );
    let rss = Gauge::<i64>::default();
    rss.set(to_i64(
        usize::try_from(stats.rss_bytes).unwrap_or(usize::MAX),
    ));
    registry.register(
        "agent_resident_memory_bytes",
        "The agent's resident set size",
        rss,
    );
    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by(stats.cpu_seconds);
    registry.register(
        "agent_cpu_seconds",
        "CPU time the agent used (user + system)",
        cpu,
    );
}

/// Events and stacks lost, by cause.
fn loss_series(registry: &mut Registry, stats: &AgentStats) {
    let lost = Family::<CauseLabels, Counter>::default();
    registry.register("lost", "Events and stacks lost, by cause", lost.clone());
    let l = &stats.lost;
    for (cause, count) in [
        ("ringbuf_full", l.ringbuf_full),
        ("user_stack", l.user_stacks),
        ("kernel_stack", l.kernel_stacks),
        ("accept_read", l.accept_reads),
        ("undecodable", l.undecodable),
        ("unresolved_cookie", l.unresolved_cookies),
    ] {
        lost.get_or_create(&CauseLabels {
            cause: cause.to_owned(),
        })
        .inc_by(count);
    }
}

/// The same exposition in the classic Prometheus text format (0.0.4), for
/// clients that do not ask for OpenMetrics (curl, `promtool check
/// metrics`): a counter family is named with its `_total` suffix in its HELP
/// and TYPE lines, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
/// Prometheus itself asks for OpenMetrics and gets the crate's output as is.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A label value as the text formats want it: backslash, double quote and
/// newline escaped (the crate writes values as they are). A command name
/// can hold any of them: unescaped, one process would make the whole
/// exposition unparseable.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Containers by their short id, as `docker ps` shows them.
fn container_label(id: Option<&str>) -> String {
    id.map(|id| id.chars().take(12).collect())
        .unwrap_or_default()
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Direction,
        report::model::{Group, ProcessReport},
    };

    fn process(pid: u32, open: usize) -> ProcessReport {
        ProcessReport {
            pid,
            comm: format!("p{pid}"),
            open,
            groups: vec![Group::for_tests(Direction::Connect, open)],
            ..ProcessReport::default()
        }
    }

    #[test]
    fn the_top_k_get_series_and_the_rest_are_summed() {
        let report = Report {
            processes: vec![process(1, 5), process(2, 3), process(3, 2)],
            ..Report::default()
        };
        let text = render(&report, &[], &AgentStats::default(), 1, &BTreeMap::new()).unwrap();
        assert!(text.contains(
            "leakbpf_open_sockets{pid=\"1\",comm=\"p1\",container=\"\",direction=\"connect\",state=\"CLOSE_WAIT\"} 5"
        ), "{text}");
        assert!(text.contains(
            "leakbpf_open_sockets{pid=\"other\",comm=\"other\",container=\"\",direction=\"connect\",state=\"CLOSE_WAIT\"} 5"
        ), "{text}");
        assert!(!text.contains("pid=\"2\""));
        assert!(text.contains("leakbpf_suspects{class=\"growing\"} 0"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn constant_labels_come_first_on_every_series_escaped() {
        let report = Report {
            processes: vec![process(7, 2)],
            ..Report::default()
        };
        let labels: BTreeMap<String, String> = [
            ("node".to_owned(), "worker-1".to_owned()),
            ("pod".to_owned(), "a\"b\\c\nd".to_owned()),
        ]
        .into();
        let text = render(&report, &[], &AgentStats::default(), 5, &labels).unwrap();
        let prefix = "node=\"worker-1\",pod=\"a\\\"b\\\\c\\nd\"";
        assert!(text.contains(&format!(
            "leakbpf_open_sockets{{{prefix},pid=\"7\",comm=\"p7\",container=\"\",direction=\"connect\",state=\"CLOSE_WAIT\"}} 2\n"
        )), "{text}");
        assert!(
            text.contains(&format!("leakbpf_complete{{{prefix}}} 0\n")),
            "{text}"
        );
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // 1 open + 4 suspects + 7 event kinds (each counted from 0) + 6 lost
        // + 4 tracked + 3 evictions + 2 fixes + complete, RSS, CPU.
        assert_eq!(samples.len(), 30, "{text}");
        for line in samples {
            assert!(line.starts_with("leakbpf_"), "{line}");
            assert!(line.contains(&format!("{{{prefix}")), "{line}");
        }
    }

    #[test]
    fn a_command_name_with_quotes_and_backslashes_is_escaped() {
        let mut odd = process(9, 1);
        odd.comm = "we\"ird\\".to_owned();
        let report = Report {
            processes: vec![odd],
            ..Report::default()
        };
        let text = render(&report, &[], &AgentStats::default(), 5, &BTreeMap::new()).unwrap();
        assert!(
            text.contains("leakbpf_open_sockets{pid=\"9\",comm=\"we\\\"ird\\\\\",container=\"\""),
            "{text}"
        );
    }

    #[test]
    fn the_classic_format_names_counters_with_their_suffix() {
        let open = "# HELP leakbpf_events Events.\n# TYPE leakbpf_events counter\n\
                    leakbpf_events_total{kind=\"open\"} 3\n# HELP leakbpf_complete Ok.\n\
                    # TYPE leakbpf_complete gauge\nleakbpf_complete 1\n# EOF\n";
        assert_eq!(
            classic_text(open),
            "# HELP leakbpf_events_total Events.\n# TYPE leakbpf_events_total counter\n\
             leakbpf_events_total{kind=\"open\"} 3\n# HELP leakbpf_complete Ok.\n\
             # TYPE leakbpf_complete gauge\nleakbpf_complete 1\n"
        );
    }
}
