//! `leakbpf trace`: trace, then report every socket still open, grouped by
//! the stack that opened it, with the reasons it looks leaked.
use std::{
    collections::HashSet,
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::session;
use crate::{
    cli::{ReportFormat, TraceArgs},
    clock::monotonic_ns,
    completeness::Completeness,
    event::Event,
    filter::Filter,
    report::{
        self,
        assemble::{Options, assemble},
        classify::Thresholds,
        model::{REPORT_VERSION, Report},
    },
    snapshot::{Snapshot, holder_task},
    socket_table::SocketTable,
    sockets,
    stacks::{Frames, StackResolver, UserStackKey},
    tracer::Tracer,
};

pub fn run(args: &TraceArgs) -> Result<ExitCode> {
    let filter = args.filter.filter();
    filter.check_pids_exist()?;
    let output = open_output(args)?;
    let runtime = session::runtime()?;
    let (report, tracer) = runtime.block_on(trace(args, &filter))?;
    write_report(&report, args.format, output)?;
    // Detaching waits for the kernel's RCU grace periods (about 0.1 s here):
    // after the report is out. Nothing reads the ring meanwhile.
    drop(tracer);
    Ok(ExitCode::SUCCESS)
}

/// Where the report goes.
enum Output {
    Stdout,
    /// A regular file (or a new one): written to a temporary file in the
    /// same directory, synced, then renamed over it, so a failed or killed
    /// run never truncates an earlier report.
    Atomic {
        path: PathBuf,
        temp: tempfile::NamedTempFile,
    },
    /// A device or pipe (`/dev/stdout`, a FIFO): written in place.
    InPlace {
        path: PathBuf,
    },
}

/// Fails on an unwritable --output now, not after tracing for an hour.
fn open_output(args: &TraceArgs) -> Result<Output> {
    let Some(path) = &args.output else {
        if args.format == ReportFormat::Pprof && std::io::stdout().is_terminal() {
            bail!("pprof output is binary: write it to a file with --output FILE");
        }
        return Ok(Output::Stdout);
    };
    let cannot = || format!("cannot write {}", path.display());
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => bail!("cannot write {}: it is a directory", path.display()),
        Ok(meta) if !meta.is_file() => {
            // Open (never truncate: a device or pipe) to prove it is writable.
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(cannot)?;
            return Ok(Output::InPlace { path: path.clone() });
        }
        _ => {}
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".leakbpf-report-")
        .tempfile_in(dir)
        .with_context(cannot)?;
    Ok(Output::Atomic {
        path: path.clone(),
        temp,
    })
}

/// Writes `report` in `format` to `out`. JSON is streamed: a report of
/// 100k sockets is tens of MiB of text, never held whole in memory.
fn render(report: &Report, format: ReportFormat, out: &mut dyn std::io::Write) -> Result<()> {
    match format {
        ReportFormat::Text => out.write_all(report::text::render(report).as_bytes())?,
        ReportFormat::Json => {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
            serde_json::to_writer_pretty(&mut out, report)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        ReportFormat::Pprof => out.write_all(&report::pprof::encode(report)?)?,
        ReportFormat::Folded => out.write_all(report::folded::encode(report).as_bytes())?,
    }
    Ok(())
}

fn write_report(report: &Report, format: ReportFormat, output: Output) -> Result<()> {
    let (path, written) = match output {
        Output::Stdout => {
            return render(report, format, &mut std::io::stdout().lock())
                .context("writing the report");
        }
        Output::Atomic { path, mut temp } => {
            let written = render(report, format, &mut temp)
                .and_then(|()| Ok(temp.as_file().sync_all()?))
                .and_then(|()| temp.persist(&path).map(drop).map_err(anyhow::Error::from));
            (path, written)
        }
        Output::InPlace { path } => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(anyhow::Error::from)
                .and_then(|mut file| render(report, format, &mut file));
            (path, written)
        }
    };
    if let Err(err) = written {
        // Tracing took long: do not throw the answer away.
        if format != ReportFormat::Pprof || !std::io::stdout().is_terminal() {
            let _ = render(report, format, &mut std::io::stdout().lock());
        }
        bail!(
            "cannot write {}: {err:#}; the report went to standard output instead",
            path.display()
        );
    }
    Ok(())
}

/// Traces until the end, then reports what is held open; returns the
/// tracer still attached, for the caller to detach once the report is out.
async fn trace(args: &TraceArgs, filter: &Filter) -> Result<(Report, Tracer)> {
    // Before loading anything: a signal during start-up ends tracing
    // cleanly as soon as it begins.
    let mut stop = session::Stop::install()?;
    let mut tracer = Tracer::start(&args.tracer.options())?;
    let started = Instant::now();
    let mut collector = Collector {
        // The tracer sends no destroys (lean): forget sockets at close.
        table: SocketTable::new(crate::socket_table::Limits {
            forget_closed: true,
            ..crate::socket_table::Limits::default()
        }),
        stacks: StackResolver::eager(),
        events: 0,
        started,
        progress: std::io::stderr().is_terminal(),
    };
    let mut warnings = Vec::new();
    // After attaching, so nothing opened from here on is missed: a socket
    // both found here and seen opening is tracked once (by its cookie).
    if !args.no_preexisting {
        let found = Snapshot::take(filter.pids().as_deref())?;
        found.seed(&mut collector.table, filter);
        warnings.extend(found.warnings());
    }
    session::announce(&tracer, args.duration, "report");
    crate::pump::pump(
        &mut tracer,
        stop.recv(),
        args.duration,
        Duration::from_secs(1),
        &mut collector,
    )
    .await?;
    if collector.progress {
        eprintln!();
    }
    // The stacks seen so far were handed to the symbolizer as they came:
    // what it keeps to name more (a binary's decompressed debug sections)
    // is room the snapshot and the report need. A stack among the last
    // events is named from the files read anew.
    collector.stacks.release_symbol_caches();
    let (now, snapshot_failure) = holders_now(&mut tracer, &mut collector)?;
    for warning in now.warnings() {
        if !warnings.contains(&warning) {
            warnings.push(warning);
        }
    }
    if !args.no_preexisting {
        warnings.extend(unseen_warnings(&tracer, &collector, &now, filter));
    }
    let mut report = build_report(args, filter, &tracer, &collector, &now, warnings, started);
    crate::containers::annotate(&mut report);
    if let Some(reason) = snapshot_failure {
        report.complete = false;
        report.incomplete.insert(0, reason);
    }
    eprintln!(
        "leakbpf: {} events in {:.1} s, lost events: {}, {} open sockets reported{}",
        report.events,
        report.duration_s,
        report.lost_events,
        report.open_sockets,
        if report.complete {
            String::new()
        } else {
            format!("; warning: incomplete: {}", report.incomplete.join("; "))
        }
    );
    Ok((report, tracer))
}

/// Who holds what now: every fd table, whatever the filter, since a socket
/// may have moved to a process the filter names (or away from it).
/// Releases that came in while it was taken still count. If it cannot be
/// taken, the traced sockets are still reported, under their openers, with
/// the reason the report is incomplete.
fn holders_now(
    tracer: &mut Tracer,
    collector: &mut Collector,
) -> Result<(Snapshot, Option<String>)> {
    let taken = match Snapshot::take(None) {
        Ok(now) => (now, None),
        Err(err) => (
            Snapshot::from_parts(
                Vec::new(),
                std::collections::HashMap::new(),
                crate::sockets::ScanStats::default(),
                monotonic_ns(),
                false,
            ),
            Some(format!("who holds the sockets now is unknown: {err:#}")),
        ),
    };
    let mut late = Vec::new();
    tracer.drain(&mut late);
    crate::pump::Consumer::batch(collector, tracer, &mut late)?;
    Ok(taken)
}

/// Sockets held now that no hook saw opening (io_uring accepts on the
/// tracepoint set, an accept already waiting when fentry/kprobe attached):
/// named, since the report cannot list them.
fn unseen_warnings(
    tracer: &Tracer,
    collector: &Collector,
    now: &Snapshot,
    filter: &Filter,
) -> Vec<String> {
    sockets::unseen::warnings(
        now.sockets(),
        |cookie| collector.table.contains(cookie),
        |owned| {
            owned
                .owners
                .iter()
                .any(|owner| filter.matches(&holder_task(owner), owned.socket.family))
        },
        filter.pids().as_deref(),
        tracer.hooks().name(),
    )
}

/// The report of what `collector` saw, as `snapshot` finds it now.
fn build_report(
    args: &TraceArgs,
    filter: &Filter,
    tracer: &Tracer,
    collector: &Collector,
    snapshot: &Snapshot,
    warnings: Vec<String>,
    started: Instant,
) -> Report {
    let lost = tracer.lost();
    let completeness = Completeness::of_run(&lost, &collector.table.stats());
    let header = Report {
        version: REPORT_VERSION,
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        hooks: tracer.hooks().name().to_owned(),
        duration_s: started.elapsed().as_secs_f64(),
        events: collector.events,
        lost_events: lost.events(),
        lost_stacks: lost.stacks(),
        complete: completeness.is_complete(),
        incomplete: completeness.into_reasons(),
        warnings,
        ..Report::default()
    };
    let frames = Frames {
        tracer,
        stacks: &collector.stacks,
    };
    let mut report = assemble(
        header,
        &collector.table,
        snapshot,
        &frames,
        &Options {
            now_ns: monotonic_ns(),
            filter,
            min_age_s: args.min_age.as_secs_f64(),
            top: args.top,
            thresholds: Thresholds {
                idle_s: args.idle.as_secs_f64(),
            },
        },
    );
    crate::go_requests::annotate(&mut report, &tracer.go_warnings(), tracer.probing_go());
    report
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

impl crate::pump::Consumer for Collector {
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
        // FIN_WAIT): forget them after the table's retention time, and the
        // frames no open socket needs any more.
        self.table.sweep(monotonic_ns());
        // Per origin, not per socket: at 100,000 open sockets a walk of
        // them all took ~40 ms of every second.
        let needed: HashSet<UserStackKey> = self
            .table
            .origins_in_use()
            .flat_map(|o| {
                let (pid, start) = o.opener;
                [
                    o.user_stack.id().map(|id| (pid, start, id, o.leaf_caller)),
                    o.request_stack.id().map(|id| (pid, start, id, None)),
                ]
            })
            .flatten()
            .collect();
        self.stacks.retain_user(|key| needed.contains(key));
        if self.progress {
            let stats = self.table.stats();
            eprint!(
                "\r[{:>6.1}s] {} events, {} opened, {} closed, {} open now   ",
                self.started.elapsed().as_secs_f64(),
                self.events,
                stats.opened,
                stats.closed,
                // Closed sockets are forgotten at once here: all are open.
                self.table.len()
            );
        }
    }
}
