//! `leakbpf trace`: trace, then report every socket still open, grouped by
//! the stack that opened it, with the reasons it looks leaked.
use std::{
    collections::HashMap,
    fs::File,
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::session;
use crate::{
    cli::{ReportFormat, TraceArgs},
    clock::monotonic_ns,
    event::{Endpoints, Event, Task, TcpState},
    filter::Filter,
    report::{
        self,
        assemble::{FrameSource, LiveFacts, Options, assemble},
        classify::Thresholds,
        model::{REPORT_VERSION, Report},
    },
    socket_table::{Socket, SocketTable},
    sockets::{self, ScanOptions},
    stacks::StackResolver,
    symbolize::Frame,
    tracer::{Tracer, TracerOptions},
};

pub fn run(args: TraceArgs) -> Result<ExitCode> {
    let filter = Filter::new(&args.filter);
    filter.check_pids_exist()?;
    // Fail on an unwritable --output now, not after tracing for an hour.
    let output = match &args.output {
        Some(path) => {
            Some(File::create(path).with_context(|| format!("cannot write {}", path.display()))?)
        }
        None => {
            if args.format == ReportFormat::Pprof && std::io::stdout().is_terminal() {
                bail!("pprof output is binary: write it to a file with --output FILE");
            }
            None
        }
    };
    let report = session::runtime()?.block_on(trace(&args, &filter))?;
    let bytes = match args.format {
        ReportFormat::Text => report::text::render(&report).into_bytes(),
        ReportFormat::Json => {
            let mut json = serde_json::to_vec_pretty(&report)?;
            json.push(b'\n');
            json
        }
        ReportFormat::Pprof => report::pprof::encode(&report)?,
        ReportFormat::Folded => report::folded::encode(&report).into_bytes(),
    };
    match output {
        Some(mut file) => file.write_all(&bytes).context("writing the report")?,
        None => std::io::stdout()
            .lock()
            .write_all(&bytes)
            .context("writing the report")?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn trace(args: &TraceArgs, filter: &Filter) -> Result<Report> {
    let mut tracer = Tracer::start(TracerOptions {
        hooks: args.tracer.hooks,
        ring_bytes: args.tracer.ring_bytes,
    })?;
    let started = Instant::now();
    let mut table = SocketTable::default();
    let mut incomplete = Vec::new();
    let mut warnings = Vec::new();
    // After attaching, so nothing opened from here on is missed: a socket
    // both found here and seen opening is tracked once (by its cookie).
    if !args.no_preexisting {
        preexisting(&mut table, filter, &mut warnings)?;
    }
    let progress = std::io::stderr().is_terminal();
    session::announce(&tracer, args.duration, "report");

    let mut collector = Collector {
        table,
        stacks: StackResolver::default(),
        events: 0,
        started,
        progress,
    };
    session::pump(
        &mut tracer,
        args.duration,
        Duration::from_secs(1),
        &mut collector,
    )
    .await?;
    if progress {
        eprintln!();
    }
    let Collector {
        table,
        stacks,
        events,
        ..
    } = collector;

    let now_ns = monotonic_ns();
    let lost = tracer.lost();
    if lost.events() > 0 {
        incomplete.push(format!("{} events lost ({lost:?})", lost.events()));
    }
    if lost.stacks() > 0 {
        incomplete.push(format!("{} stacks lost", lost.stacks()));
    }
    let dropped = table.stats().dropped_full;
    if dropped > 0 {
        incomplete.push(format!(
            "{dropped} sockets not tracked: the socket table was full"
        ));
    }
    if !args.no_preexisting {
        warnings.extend(sockets::unseen::warnings(
            |cookie| table.get(cookie).is_some(),
            |owned| preexisting_wanted(owned, filter),
            filter.pids(),
            tracer.hooks().name(),
        ));
    }
    let header = Report {
        version: REPORT_VERSION,
        hooks: tracer.hooks().name().to_owned(),
        duration_s: started.elapsed().as_secs_f64(),
        events,
        lost_events: lost.events(),
        lost_stacks: lost.stacks(),
        complete: incomplete.is_empty(),
        incomplete,
        warnings,
        processes: Vec::new(),
    };
    let (live, exes) = live_facts(&table, filter);
    let frames = Frames {
        tracer: &tracer,
        stacks: &stacks,
    };
    let report = assemble(
        header,
        &table,
        &live,
        &exes,
        &frames,
        &Options {
            now_ns,
            filter,
            min_age_s: args.min_age.as_secs_f64(),
            top: args.top,
            thresholds: Thresholds {
                idle_s: args.idle.as_secs_f64(),
            },
        },
    );
    let open: usize = report.processes.iter().map(|p| p.open).sum();
    eprintln!(
        "leakbpf: {events} events in {:.1} s, lost events: {}, {open} open sockets reported{}",
        report.duration_s,
        report.lost_events,
        if report.complete {
            String::new()
        } else {
            format!("; warning: incomplete: {}", report.incomplete.join("; "))
        }
    );
    Ok(report)
}

/// Keeps the socket table up to date while tracing.
struct Collector {
    table: SocketTable,
    stacks: StackResolver,
    events: u64,
    started: Instant,
    /// Print progress (stderr is a terminal).
    progress: bool,
}

impl session::Consumer for Collector {
    fn batch(&mut self, tracer: &Tracer, events: &mut Vec<Event>) -> Result<()> {
        for mut event in events.drain(..) {
            self.events += 1;
            self.stacks.observe(tracer, &mut event);
            self.table.apply(&event);
        }
        Ok(())
    }

    fn tick(&mut self, _tracer: &Tracer) {
        // Closed sockets whose destroy never came (lost, or still in
        // FIN_WAIT): forget them after the table's retention time.
        self.table.sweep(monotonic_ns());
        if self.progress {
            let stats = self.table.stats();
            eprint!(
                "\r[{:>6.1}s] {} events, {} opened, {} closed, {} open now   ",
                self.started.elapsed().as_secs_f64(),
                self.events,
                stats.opened,
                stats.closed,
                self.table.open_sockets().count()
            );
        }
    }
}

/// Puts the sockets processes already hold into the table.
fn preexisting(table: &mut SocketTable, filter: &Filter, warnings: &mut Vec<String>) -> Result<()> {
    let options = ScanOptions {
        pids: filter.pids(),
        ..ScanOptions::default()
    };
    let (found, stats) = sockets::scan_with_stats(&options)
        .context("listing the sockets already open (sock_diag, /proc)")?;
    if stats.walk.permission_denied > 0 {
        warnings.push(format!(
            "{} processes' fd tables could not be read: their pre-existing sockets are not listed",
            stats.walk.permission_denied
        ));
    }
    let now_ns = monotonic_ns();
    for owned in found {
        if !preexisting_wanted(&owned, filter) {
            continue;
        }
        // A socket shared by fork/dup is reported once, under its first owner.
        let Some(owner) = owned.owners.first() else {
            continue;
        };
        let task = owner_task(owner);
        let family = owned.socket.family;
        let endpoints = Endpoints {
            family,
            local: owned.socket.local,
            remote: owned.socket.remote,
            state: TcpState::from_kernel(owned.socket.state),
        };
        table.insert_preexisting(owned.socket.cookie, task, endpoints, Some(owner.fd), now_ns);
    }
    Ok(())
}

/// Whether the filter keeps a socket found by a scan (by its first owner).
fn preexisting_wanted(owned: &sockets::OwnedSocket, filter: &Filter) -> bool {
    owned
        .owners
        .first()
        .is_some_and(|owner| filter.matches(&owner_task(owner), owned.socket.family))
}

fn owner_task(owner: &sockets::Owner) -> Task {
    Task {
        pid: owner.pid,
        tid: 0,
        cgroup_id: 0,
        comm: owner.comm.as_str().into(),
    }
}

/// The kernel's view of the open sockets now, and their owners' executables.
fn live_facts(
    table: &SocketTable,
    filter: &Filter,
) -> (HashMap<u64, LiveFacts>, HashMap<u32, String>) {
    let mut live = HashMap::new();
    let mut exes = HashMap::new();
    // Best effort: without it the report still has what the events said.
    let options = ScanOptions {
        pids: filter.pids(),
        ..ScanOptions::default()
    };
    let Ok(found) = sockets::scan(&options) else {
        return (live, exes);
    };
    let mut by_cookie: HashMap<u64, &sockets::OwnedSocket> = found
        .iter()
        .map(|owned| (owned.socket.cookie, owned))
        .collect();
    for socket in table.open_sockets() {
        let pid = socket.owner.pid;
        if !exes.contains_key(&pid)
            && let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe"))
        {
            exes.insert(pid, exe.display().to_string());
        }
        let Some(owned) = by_cookie.remove(&socket.cookie) else {
            continue;
        };
        let diag = &owned.socket;
        let idle_ms = match (diag.last_data_recv_ms, diag.last_data_sent_ms) {
            (Some(recv), Some(sent)) => Some(u64::from(recv.min(sent))),
            _ => None,
        };
        live.insert(
            socket.cookie,
            LiveFacts {
                state: Some(TcpState::from_kernel(diag.state)),
                unread_bytes: Some(diag.unread_bytes()),
                unsent_bytes: Some(diag.send_queue),
                idle_ms,
                fd: owned.owners.iter().find(|o| o.pid == pid).map(|o| o.fd),
            },
        );
    }
    (live, exes)
}

struct Frames<'a> {
    tracer: &'a Tracer,
    stacks: &'a StackResolver,
}

impl FrameSource for Frames<'_> {
    fn user(&self, socket: &Socket) -> Vec<Frame> {
        self.stacks
            .user_frames(
                self.tracer,
                socket.owner.pid,
                socket.user_stack,
                socket.leaf_caller,
            )
            .map(|frames| frames.to_vec())
            .unwrap_or_default()
    }

    fn kernel(&self, socket: &Socket) -> Vec<Frame> {
        self.stacks
            .kernel_frames(self.tracer, socket.kernel_stack)
            .map(|frames| frames.to_vec())
            .unwrap_or_default()
    }
}
