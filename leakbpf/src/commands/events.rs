//! `leakbpf events`: every lifecycle event of every socket opened while it
//! runs: opens and closes by the process that did them, state changes and
//! destroys (which happen in the kernel, not in a process) by the socket's
//! opener, through the socket table.
use std::{
    fmt::Write as _,
    io::{BufWriter, Write as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use super::session;
use crate::{
    cli::{EventFormat, EventsArgs},
    clock::Clock,
    completeness::Completeness,
    event::{Direction, Event, Family, Stack, Task, TcpState},
    filter::Filter,
    socket_table::{Applied, Socket, SocketTable},
    stacks::StackResolver,
    symbolize::Frame,
    tracer::{LostCounts, Tracer},
};

/// One output line.
#[derive(Debug, Serialize)]
struct Record<'a> {
    event: &'static str,
    /// RFC 3339 wall time.
    time: String,
    /// Kernel CLOCK_MONOTONIC time, for ordering and arithmetic.
    time_ns: u64,
    pid: u32,
    tid: u32,
    comm: &'a str,
    cgroup_id: u64,
    cookie: u64,
    family: Family,
    local: String,
    remote: String,
    state: TcpState,
    direction: Direction,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_state: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifetime_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_stack_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_stack_id: Option<u32>,
    /// errno of `bpf_get_stackid` when a stack could not be recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_stack_error: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_stack_error: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_stack: Option<std::sync::Arc<[Frame]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_stack: Option<std::sync::Arc<[Frame]>>,
    /// A Go connect's request site (see `trace`); absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_stack_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_stack: Option<std::sync::Arc<[Frame]>>,
}

#[derive(Debug, Serialize)]
struct Summary {
    event: &'static str,
    hooks: &'static str,
    duration_s: f64,
    events: u64,
    shown: u64,
    lost_events: u64,
    lost_stacks: u64,
    lost: LostCounts,
    /// Opens not tracked because the socket table was full (their later
    /// events are not shown either).
    untracked_full: u64,
    /// False whenever something was lost: counts may be wrong.
    complete: bool,
    /// Why not complete.
    incomplete: Vec<String>,
}

pub fn run(args: EventsArgs) -> Result<ExitCode> {
    let filter = args.filter.filter();
    filter.check_pids_exist()?;
    session::runtime()?.block_on(stream(args, filter))
}

async fn stream(args: EventsArgs, filter: Filter) -> Result<ExitCode> {
    // Before loading anything: a signal during start-up ends tracing
    // cleanly as soon as it begins.
    let mut stop = session::Stop::install()?;
    let mut tracer = Tracer::start(&crate::tracer::TracerOptions {
        // `events` shows every transition; `--stacks` shows kernel stacks too.
        all_facts: true,
        kernel_stacks: args.tracer.kernel_stacks || args.stacks,
        ..args.tracer.options()
    })?;
    let clock = Clock::now();
    let started = Instant::now();
    session::announce(&tracer, args.duration, "stop");

    let mut printer = Printer {
        format: args.format,
        out: BufWriter::new(std::io::stdout().lock()),
        clock,
        stacks: StackResolver::default(),
        show_stacks: args.stacks,
        filter,
        table: SocketTable::default(),
        events: 0,
        shown: 0,
    };
    if args.format == EventFormat::Text {
        printer.header()?;
    }

    crate::pump::pump(
        &mut tracer,
        stop.recv(),
        args.duration,
        Duration::from_secs(60),
        &mut printer,
    )
    .await?;

    let lost = tracer.lost();
    let table_stats = printer.table.stats();
    let completeness = Completeness::of_run(&lost, &table_stats);
    let summary = Summary {
        event: "summary",
        hooks: tracer.hooks().name(),
        duration_s: started.elapsed().as_secs_f64(),
        events: printer.events,
        shown: printer.shown,
        lost_events: lost.events(),
        lost_stacks: lost.stacks(),
        lost,
        untracked_full: table_stats.dropped_full,
        complete: completeness.is_complete(),
        incomplete: completeness.into_reasons(),
    };
    if args.format == EventFormat::Json {
        serde_json::to_writer(&mut printer.out, &summary)?;
        writeln!(printer.out)?;
    }
    printer.out.flush()?;
    eprintln!(
        "leakbpf: {} events in {:.1} s ({} shown), hooks: {}, lost events: {}, lost stacks: {}",
        summary.events,
        summary.duration_s,
        summary.shown,
        summary.hooks,
        summary.lost_events,
        summary.lost_stacks
    );
    if !summary.complete {
        eprintln!(
            "leakbpf: warning: incomplete: {}; counts may be wrong. \
             A larger --ring-bytes helps against ring buffer losses.",
            summary.incomplete.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct Printer<W: std::io::Write> {
    format: EventFormat,
    out: W,
    clock: Clock,
    stacks: StackResolver,
    show_stacks: bool,
    filter: Filter,
    table: SocketTable,
    events: u64,
    shown: u64,
}

impl<W: std::io::Write> crate::pump::Consumer for Printer<W> {
    fn batch(&mut self, tracer: &Tracer, events: &mut Vec<Event>) -> Result<()> {
        self.print_batch(tracer, events)
    }

    fn tick(&mut self, _tracer: &Tracer) {
        // Closed sockets whose destroy never came: forget them in time.
        self.table.sweep(crate::clock::monotonic_ns());
    }
}

impl<W: std::io::Write> Printer<W> {
    fn header(&mut self) -> Result<()> {
        writeln!(
            self.out,
            "{:<15} {:<7} {:>7} {:<15} {:<8} {:>22} {:>22} {:<11} DETAIL",
            "TIME", "EVENT", "PID", "COMM", "DIR", "LOCAL", "REMOTE", "STATE"
        )?;
        Ok(())
    }

    fn print_batch(&mut self, tracer: &Tracer, batch: &mut Vec<Event>) -> Result<()> {
        for mut event in batch.drain(..) {
            self.events += 1;
            self.stacks.observe(tracer, &mut event);
            // A destroy removes the socket: look at it first.
            let before = match &event {
                Event::Destroy(d) => self.table.get(d.cookie),
                _ => None,
            };
            let applied = self.table.apply(&event);
            let socket = match applied {
                Applied::Untracked | Applied::DroppedFull | Applied::Exited | Applied::Ignored => {
                    continue;
                }
                Applied::Destroyed => before,
                _ => self.table.get(event.cookie()),
            };
            let Some(socket) = socket else { continue };
            if !self
                .filter
                .matches(actor(&event, &socket), socket.endpoints.family())
            {
                continue;
            }
            self.shown += 1;
            let record = self.record(tracer, &event, &applied, &socket);
            match self.format {
                EventFormat::Json => {
                    serde_json::to_writer(&mut self.out, &record)?;
                    writeln!(self.out)?;
                }
                EventFormat::Text => self.text(&record)?,
            }
        }
        self.out.flush()?;
        Ok(())
    }

    fn record<'a>(
        &self,
        tracer: &Tracer,
        event: &'a Event,
        applied: &Applied,
        socket: &'a Socket,
    ) -> Record<'a> {
        let task = actor(event, socket);
        let mut record = Record {
            event: event.kind_name(),
            time: humantime::format_rfc3339_micros(self.clock.wall(event.time_ns())).to_string(),
            time_ns: event.time_ns(),
            pid: task.pid,
            tid: task.tid,
            comm: task.comm.as_str(),
            cgroup_id: task.cgroup_id,
            cookie: socket.cookie,
            family: socket.endpoints.family(),
            local: socket.endpoints.local().to_string(),
            remote: socket.endpoints.remote().to_string(),
            state: socket.endpoints.state,
            direction: socket.direction,
            old_state: None,
            fd: None,
            lifetime_ms: None,
            user_stack_id: None,
            kernel_stack_id: None,
            user_stack_error: None,
            kernel_stack_error: None,
            user_stack: None,
            kernel_stack: None,
            request_stack_id: None,
            request_stack: None,
        };
        match (event, applied) {
            (Event::Open(open), _) => {
                record.fd = open.fd;
                record.user_stack_id = stack_id(open.user_stack);
                record.kernel_stack_id = stack_id(open.kernel_stack);
                record.user_stack_error = stack_error(open.user_stack);
                record.kernel_stack_error = stack_error(open.kernel_stack);
                record.request_stack_id = stack_id(open.request_stack);
                if self.show_stacks {
                    record.request_stack =
                        self.stacks
                            .user_frames(tracer, &open.task, open.request_stack, None);
                    record.user_stack = self.stacks.user_frames(
                        tracer,
                        &open.task,
                        open.user_stack,
                        open.leaf_caller,
                    );
                    record.kernel_stack = self.stacks.kernel_frames(tracer, open.kernel_stack);
                }
            }
            (Event::State(change), _) => record.old_state = Some(change.old),
            (Event::Close(close), Applied::Closed) => {
                record.state = close.state;
                let lifetime_ns = close.time_ns.saturating_sub(socket.opened_ns);
                record.lifetime_ms = Some(lifetime_ns as f64 / 1e6);
            }
            _ => {}
        }
        record
    }

    fn text(&mut self, r: &Record<'_>) -> Result<()> {
        let time = r.time.get(11..26).unwrap_or(&r.time);
        let mut detail = format!("cookie={}", r.cookie);
        if let Some(old) = r.old_state {
            detail = format!("from {old} {detail}");
        }
        if let Some(ms) = r.lifetime_ms {
            detail = format!("after {ms:.3} ms {detail}");
        }
        if let Some(fd) = r.fd {
            let _ = write!(detail, " fd={fd}");
        }
        writeln!(
            self.out,
            "{:<15} {:<7} {:>7} {:<15} {:<8} {:>22} {:>22} {:<11} {}",
            time,
            r.event,
            r.pid,
            r.comm,
            r.direction.as_str(),
            r.local,
            r.remote,
            r.state.name(),
            detail
        )?;
        for (label, frames) in [
            ("request", &r.request_stack),
            ("user", &r.user_stack),
            ("kernel", &r.kernel_stack),
        ] {
            for frame in frames.iter().flat_map(|f| f.iter()) {
                writeln!(
                    self.out,
                    "    {label:<6} {:#018x} {}",
                    frame.address,
                    frame.symbol.as_deref().unwrap_or("[unknown]")
                )?;
            }
        }
        Ok(())
    }
}

/// Open and close happen in a process; state and destroy show the opener.
fn actor<'a>(event: &'a Event, socket: &'a Socket) -> &'a Task {
    match event {
        Event::Open(open) => &open.task,
        Event::Close(close) => &close.task,
        _ => &socket.opener,
    }
}

fn stack_error(stack: Stack) -> Option<i32> {
    match stack {
        Stack::Id(_) | Stack::Inline => None,
        Stack::Missing(errno) => Some(errno),
    }
}

fn stack_id(stack: Stack) -> Option<u32> {
    stack.id()
}
