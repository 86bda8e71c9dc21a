//! `leakbpf agent`: the always-on host daemon. One long-lived socket table
//! fed by the same tracer and decoder as `trace`; every interval it takes
//! the same snapshot (sock_diag in every network namespace, every fd
//! table), reconciles the table with it, builds the same report, judges
//! suspects over a sliding window ([`suspects`]), forecasts fd and memory
//! exhaustion ([`outlook`]), logs what changed as JSON lines, and publishes
//! the result for the HTTP API ([`http`], [`metrics`]).
//!
//! The ring-buffer reader never waits on that work's slow part: the
//! snapshot is taken on a blocking thread while the loop keeps reading, and
//! the HTTP handlers run on another thread and only read what was published.
pub mod config;
pub mod http;
pub mod metrics;
pub mod outlook;
pub mod suspects;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, Result};
use tokio::task::JoinHandle;

use self::{
    config::Settings,
    http::{Published, Shared},
    metrics::AgentStats,
    outlook::Memory,
    suspects::{Change, Suspect, Suspects},
};
use crate::{
    clock::monotonic_ns,
    completeness::LostCounts,
    containers,
    event::{Direction, Event, Stack},
    filter::Filter,
    report::{
        assemble::{Options, assemble},
        classify::Thresholds,
        model::{Outlook, REPORT_VERSION, Report},
    },
    snapshot::Snapshot,
    socket_table::{Limits, SocketTable},
    stacks::{Frames, StackResolver},
    tracer::{DRAIN_INTERVAL, Tracer, TracerOptions},
};

/// Everything the agent is told.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub settings: Settings,
    pub tracer: TracerOptions,
    /// Where the cgroup v2 hierarchy is mounted (memory limits).
    pub cgroup_mount: PathBuf,
}

/// Runs until `stop` resolves, then detaches everything (the tracer is
/// dropped) and returns. Binds the listener first, so a taken port fails
/// before anything is loaded. Installs no signal handlers of its own.
pub async fn run(options: AgentOptions, stop: impl Future<Output = ()>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(options.settings.listen)
        .await
        .with_context(|| format!("listening on {}", options.settings.listen))?;
    let shared: Shared = Arc::default();
    let (requests, mut fresh) = tokio::sync::mpsc::channel::<http::Fresh>(64);
    let (quit_http, http_quit) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let router = http::router(http::AppState {
            shared: Arc::clone(&shared),
            requests,
        });
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = http_quit.await;
                })
                .await
        }
    });
    let result = run_loop(&options, &shared, &mut fresh, stop).await;
    let _ = quit_http.send(());
    // Requests in flight finish; none can hold us for long (they only read).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), server).await;
    result
}

/// At most one evaluation asked for over HTTP per this long.
const MIN_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

async fn run_loop(
    options: &AgentOptions,
    shared: &Shared,
    fresh: &mut tokio::sync::mpsc::Receiver<http::Fresh>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let mut tracer = Tracer::start(&options.tracer)?;
    let mut agent = Agent::new(options);
    // Sockets already open: tracked from the start, as `trace` does.
    let first = tokio::task::spawn_blocking(|| Snapshot::take(None))
        .await
        .context("the start-up snapshot")??;
    first.seed(&mut agent.table, &Filter::default());
    agent.preexisting_seen = agent.table.stats().preexisting;
    eprintln!(
        "leakbpf: agent tracing TCP sockets with the {} hook set; serving http://{} (/metrics, /leaks, /leaks.pprof, /healthz); evaluating every {}",
        tracer.hooks(),
        options.settings.listen,
        humantime::format_duration(options.settings.interval)
    );
    tokio::pin!(stop);
    let mut drains = tokio::time::interval(DRAIN_INTERVAL);
    drains.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut evaluations = tokio::time::interval(options.settings.interval);
    evaluations.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<(JoinHandle<Result<Snapshot>>, LostCounts)> = None;
    // Who asked for an evaluation over HTTP (`?fresh=1`), and when the last
    // one was published.
    let mut waiting: Vec<http::Fresh> = Vec::new();
    let mut published_at = tokio::time::Instant::now();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            read = tracer.read(&mut batch) => read?,
            _ = drains.tick() => tracer.drain(&mut batch),
            _ = evaluations.tick(), if pending.is_none() => {
                // Losses before the snapshot starts are healed by it.
                pending = Some(agent.start_snapshot(&tracer));
                continue;
            }
            Some(reply) = fresh.recv() => {
                if pending.is_none() && published_at.elapsed() < MIN_FRESH {
                    let last = Arc::clone(&shared.read().unwrap_or_else(std::sync::PoisonError::into_inner));
                    let _ = reply.send(last);
                } else {
                    waiting.push(reply);
                    if pending.is_none() {
                        pending = Some(agent.start_snapshot(&tracer));
                    }
                }
                continue;
            }
            taken = async { (&mut pending.as_mut().expect("guarded").0).await }, if pending.is_some() => {
                let (_, lost_before) = pending.take().expect("guarded");
                // Whatever happened while it was taken is applied first.
                tracer.drain(&mut batch);
                agent.apply(&tracer, &mut batch);
                let taken = taken.context("the snapshot thread").and_then(|r| r);
                let published = Arc::new(agent.evaluate(&mut tracer, taken, lost_before)?);
                *shared.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&published);
                published_at = tokio::time::Instant::now();
                for reply in waiting.drain(..) {
                    let _ = reply.send(Arc::clone(&published));
                }
                continue;
            }
            () = &mut stop => break,
        }
        agent.apply(&tracer, &mut batch);
        batch.shrink_to(crate::pump::BATCH_KEEP);
    }
    eprintln!("leakbpf: agent stopping; detaching");
    Ok(())
}

/// The agent's state between evaluations.
struct Agent {
    settings: Settings,
    cgroup_mount: PathBuf,
    table: SocketTable,
    stacks: StackResolver,
    suspects: Suspects,
    stats: AgentStats,
    /// Losses the last reconciliation healed.
    healed: LostCounts,
    /// Pre-existing inserts counted so far (start-up seeding is not a fix).
    preexisting_seen: u64,
    memory: HashMap<u32, VecDeque<(f64, u64)>>,
    started: Instant,
}

impl Agent {
    fn new(options: &AgentOptions) -> Agent {
        Agent {
            settings: options.settings.clone(),
            cgroup_mount: options.cgroup_mount.clone(),
            table: SocketTable::new(Limits {
                max_sockets: options.settings.max_sockets,
                // The tracer sends no destroys (lean): forget sockets at close.
                forget_closed: true,
                ..Limits::default()
            }),
            stacks: StackResolver::eager(),
            suspects: Suspects::new(options.settings.window),
            stats: AgentStats::default(),
            healed: LostCounts::default(),
            preexisting_seen: 0,
            memory: HashMap::new(),
            started: Instant::now(),
        }
    }

    fn apply(&mut self, tracer: &Tracer, batch: &mut Vec<Event>) {
        for mut event in batch.drain(..) {
            self.stats.events[event.kind_index()] += 1;
            self.stacks.observe(tracer, &mut event);
            self.table.apply(&event);
        }
    }

    /// One evaluation: reconcile, report, judge, forecast, log, publish.
    fn evaluate(
        &mut self,
        tracer: &mut Tracer,
        taken: Result<Snapshot>,
        lost_before: LostCounts,
    ) -> Result<Published> {
        let mut incomplete = Vec::new();
        let snapshot = match taken {
            Ok(snapshot) => {
                self.reconcile(&snapshot, lost_before);
                snapshot
            }
            Err(err) => {
                incomplete.push(format!("who holds the sockets now is unknown: {err:#}"));
                Snapshot::default()
            }
        };
        self.table.stop_recording_departures();
        let now_ns = monotonic_ns();
        self.table.sweep(now_ns);
        let mut report = self.report(tracer, &snapshot, now_ns, incomplete);
        containers::annotate(&mut report);
        let at_s = self.started.elapsed().as_secs_f64();
        let mut evaluation = self.suspects.evaluate(&mut report, at_s);
        self.forecast(&mut report, &evaluation.rates, at_s);
        for suspect in &mut evaluation.suspects {
            suspect.outlook = outlook_of(&report, suspect.pid);
        }
        for (change, suspect) in &mut evaluation.changes {
            if *change != Change::Cleared {
                suspect.outlook = outlook_of(&report, suspect.pid);
            }
            log_change(*change, suspect, &report.time);
        }
        self.prune(tracer);
        self.stats.lost = tracer.lost();
        self.stats.tracked_sockets = self.table.len();
        self.stats.tracked_processes = report.processes.len();
        self.stats.cached_stacks = self.stacks.cached_user_stacks();
        self.stats.evicted_sockets = self.table.stats().dropped_full;
        self.stats.evicted_symbol_caches = self.stacks.cache_evictions();
        (self.stats.rss_bytes, self.stats.cpu_seconds) = own_usage();
        let metrics = metrics::render(
            &report,
            &evaluation.suspects,
            &self.stats,
            self.settings.top_k,
            &self.settings.metric_labels,
        )?;
        Ok(Published {
            report,
            suspects: evaluation.suspects,
            metrics,
            ready: true,
        })
    }

    /// Takes a snapshot on a blocking thread while the loop keeps applying
    /// events. Losses before it starts are healed by it; releases applied
    /// while it runs are remembered, since it may still list those sockets.
    fn start_snapshot(&mut self, tracer: &Tracer) -> (JoinHandle<Result<Snapshot>>, LostCounts) {
        self.table.record_departures();
        let lost = tracer.lost();
        (tokio::task::spawn_blocking(|| Snapshot::take(None)), lost)
    }

    /// Makes the table agree with the kernel: sockets it no longer has are
    /// forgotten (their close was lost), open sockets never seen opening are
    /// added (their open was lost, or no hook sees them). Skipped where the
    /// snapshot is partial, since then absence proves nothing.
    fn reconcile(&mut self, snapshot: &Snapshot, lost_before: LostCounts) {
        let partial =
            !snapshot.stats.namespaces.refused.is_empty() || snapshot.stats.undecodable > 0;
        if !partial {
            let unlisted = snapshot.unlisted_socket_fds();
            let removed = self.table.reconcile(snapshot.taken_ns, |socket| {
                snapshot.has(socket.cookie) || held_unlisted(socket, unlisted)
            });
            self.stats.reconciled_removed += removed as u64;
        }
        // Not a socket whose release was applied since the snapshot began:
        // it may still be in it, and its close will not come again.
        snapshot.seed(&mut self.table, &Filter::default());
        let preexisting = self.table.stats().preexisting;
        self.stats.reconciled_added += preexisting - self.preexisting_seen;
        self.preexisting_seen = preexisting;
        if !partial {
            self.healed = lost_before;
        }
    }

    fn report(
        &self,
        tracer: &Tracer,
        snapshot: &Snapshot,
        now_ns: u64,
        mut incomplete: Vec<String>,
    ) -> Report {
        let lost = tracer.lost();
        let unhealed = lost.events().saturating_sub(self.healed.events());
        if unhealed > 0 {
            incomplete.push(format!(
                "{unhealed} events lost since the last reconciliation with the kernel's socket tables (the next one repairs the counts)"
            ));
        }
        let stackless = self
            .table
            .open_sockets()
            .filter(|s| {
                s.direction != Direction::Preexisting && matches!(s.user_stack, Stack::Missing(_))
            })
            .count();
        if stackless > 0 {
            incomplete.push(format!(
                "{stackless} open sockets have no user stack (it was lost)"
            ));
        }
        if self.table.len() >= self.settings.max_sockets {
            incomplete.push(format!(
                "the socket table is at its cap of {} sockets: new sockets are not tracked",
                self.settings.max_sockets
            ));
        }
        let mut warnings = snapshot.warnings();
        if lost.events() > 0 {
            warnings.push(format!(
                "{} events lost since start ({} healed by reconciliation: {} sockets removed, {} added)",
                lost.events(),
                self.healed.events(),
                self.stats.reconciled_removed,
                self.stats.reconciled_added
            ));
        }
        let header = Report {
            version: REPORT_VERSION,
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            hooks: tracer.hooks().name().to_owned(),
            duration_s: self.started.elapsed().as_secs_f64(),
            events: self.stats.events.iter().sum(),
            lost_events: lost.events(),
            lost_stacks: lost.stacks(),
            complete: incomplete.is_empty(),
            incomplete,
            warnings,
            ..Report::default()
        };
        let frames = Frames {
            tracer,
            stacks: &self.stacks,
        };
        let mut report = assemble(
            header,
            &self.table,
            snapshot,
            &frames,
            &Options {
                now_ns,
                filter: &Filter::default(),
                min_age_s: 0.0,
                top: None,
                thresholds: Thresholds {
                    idle_s: self.settings.idle.as_secs_f64(),
                },
            },
        );
        crate::go_requests::annotate(&mut report, &tracer.go_warnings(), tracer.probing_go());
        report
    }

    /// Fills in the outlook of every process with a growing suspect.
    fn forecast(&mut self, report: &mut Report, rates: &HashMap<u32, f64>, at_s: f64) {
        let window = self.settings.window;
        self.memory.retain(|pid, _| rates.contains_key(pid));
        for process in &mut report.processes {
            let Some(&per_s) = rates.get(&process.pid) else {
                continue;
            };
            let pid = process.pid;
            let fds = outlook::open_fds(pid);
            let fd_limit = outlook::fd_limit(pid);
            let memory: Option<Memory> = process
                .cgroup
                .as_deref()
                .and_then(|path| outlook::memory(&self.cgroup_mount, path));
            let mut memory_exhaustion_s = None;
            if let Some(memory) = memory {
                let samples = self.memory.entry(pid).or_default();
                samples.push_back((at_s, memory.current));
                while samples.len() > window + 1 {
                    samples.pop_front();
                }
                if let (Some(&(t0, m0)), Some(&(t1, m1))) = (samples.front(), samples.back())
                    && t1 > t0
                    && m1 > m0
                {
                    #[allow(clippy::cast_precision_loss, reason = "bytes, far below 2^52")]
                    let rate = (m1 - m0) as f64 / (t1 - t0);
                    memory_exhaustion_s =
                        outlook::seconds_to(memory.limit, Some(memory.current), rate);
                }
            }
            process.outlook = Some(Outlook {
                leak_rate_per_hour: per_s * 3600.0,
                open_fds: fds,
                fd_limit,
                fd_exhaustion_s: outlook::seconds_to(fd_limit, fds, per_s),
                memory_bytes: memory.map(|m| m.current),
                memory_limit_bytes: memory.and_then(|m| m.limit),
                socket_memory_bytes: memory.and_then(|m| m.sockets),
                memory_exhaustion_s,
            });
        }
    }

    /// Frees kernel stack-map entries no tracked socket refers to and no
    /// open used in the last two intervals, and the caches built on them;
    /// drops symbolized stacks no tracked socket needs unless their stack is
    /// still in use (churn from the same code keeps its frames).
    fn prune(&mut self, tracer: &mut Tracer) {
        self.stacks.next_epoch(2);
        let mut live = HashSet::new();
        let mut needed = HashSet::new();
        // Per origin, not per socket (a million sockets share a few
        // thousand); a socket closed and awaiting its destroy keeps its
        // frames until then.
        for origin in self.table.origins_in_use() {
            live.extend(origin.user_stack.id());
            live.extend(origin.kernel_stack.id());
            live.extend(origin.request_stack.id());
            let (pid, start) = origin.opener;
            if let Some(id) = origin.user_stack.id() {
                needed.insert((pid, start, id, origin.leaf_caller));
            }
            if let Some(id) = origin.request_stack.id() {
                needed.insert((pid, start, id, None));
            }
        }
        let recent = self.stacks.recent_ids();
        // Counts of groups whose stack no longer opens and that hold nothing.
        self.table
            .retain_groups(|key| key.user_stack.is_none_or(|id| recent.contains(&id)));
        self.stacks
            .retain_user(|key| needed.contains(key) || recent.contains(&key.2));
        let (entries, freed) = tracer.prune_stacks(|id| live.contains(&id) || recent.contains(&id));
        self.stats.kernel_stacks = entries - freed.len();
        self.stats.stacks_pruned += freed.len() as u64;
        if !freed.is_empty() {
            self.stacks.forget_stacks(&freed.into_iter().collect());
        }
    }
}

/// Whether `socket`, which the kernel's socket tables do not list, may
/// still be open: sockets in CLOSE (a refused or reset connect) are unhashed
/// and never listed, but while their fd is held the opener's fd table has a
/// socket there that no listed socket accounts for.
fn held_unlisted(socket: &crate::socket_table::Socket, unlisted: &HashSet<(u32, i32)>) -> bool {
    socket.endpoints.state == crate::event::TcpState::Close
        && socket
            .fd
            .is_none_or(|fd| unlisted.contains(&(socket.opener.pid, fd)))
}

fn outlook_of(report: &Report, pid: u32) -> Option<Outlook> {
    report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .and_then(|p| p.outlook.clone())
}

/// One JSON line on stdout (journald keeps it as the message).
fn log_change(change: Change, suspect: &Suspect, time: &str) {
    let line = serde_json::json!({
        "time": time,
        "event": "suspect",
        "change": change,
        "message": message(change, suspect),
        "suspect": suspect,
    });
    println!("{line}");
}

/// "pid 4242 (httpleak) leaks 12 sockets/min; fd limit 1024 reached in about 1h20m".
pub fn message(change: Change, suspect: &Suspect) -> String {
    use std::fmt::Write as _;
    let who = format!("pid {} ({})", suspect.pid, suspect.comm);
    if change == Change::Cleared {
        return format!(
            "{who}: suspect cleared ({} {} sockets)",
            suspect.count,
            suspect.direction.as_str()
        );
    }
    let classes: Vec<&str> = suspect.classes.iter().map(|c| c.name()).collect();
    let mut text = format!(
        "{who}: {} {} sockets [{}]",
        suspect.count,
        suspect.direction.as_str(),
        classes.join(", ")
    );
    if let Some(outlook) = &suspect.outlook {
        text = format!(
            "{who} leaks {}",
            outlook::rate_text(outlook.leak_rate_per_hour)
        );
        if let (Some(limit), Some(s)) = (outlook.fd_limit, outlook.fd_exhaustion_s) {
            let _ = write!(text, "; fd limit {limit} reached in {}", outlook::about(s));
        }
        if let (Some(limit), Some(s)) = (outlook.memory_limit_bytes, outlook.memory_exhaustion_s) {
            let _ = write!(
                text,
                "; memory limit {limit} bytes reached in {}",
                outlook::about(s)
            );
        }
    }
    text
}

/// The agent's own resident set size and CPU seconds.
fn own_usage() -> (u64, f64) {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    // SAFETY: as above.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15: the 12th and 13th after the comm.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    #[allow(clippy::cast_precision_loss, reason = "CPU ticks")]
    (rss, cpu as f64 / hz as f64)
}
