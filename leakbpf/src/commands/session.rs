//! The event pump shared by the tracing commands: read batches until the
//! duration ends or a signal comes, then drain what the kernel still holds.
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    event::Event,
    tracer::{DRAIN_INTERVAL, Tracer},
};

/// Events' worth of buffer kept between batches.
const BATCH_KEEP: usize = 1024;

/// Says on stderr that tracing runs (scripts and tests wait for this line:
/// the programs are attached) and how it will end.
pub fn announce(tracer: &Tracer, duration: Option<Duration>, verb: &str) {
    let end = match duration {
        Some(d) => format!("will {verb} after {}", humantime::format_duration(d)),
        None => format!("Ctrl-C to {verb}"),
    };
    eprintln!(
        "leakbpf: tracing TCP sockets with the {} hook set; {end}",
        tracer.hooks()
    );
}

/// What a command does with the events.
pub trait Consumer {
    /// Takes (drains) a batch of events.
    fn batch(&mut self, tracer: &Tracer, events: &mut Vec<Event>) -> Result<()>;
    /// Called every tick (for progress).
    fn tick(&mut self, _tracer: &Tracer) {}
}

/// The signals that end tracing and still write the report: SIGINT, SIGTERM,
/// SIGHUP (a closed terminal) and SIGQUIT. Installed before anything is
/// loaded, so one that arrives during start-up is kept and ends tracing as
/// soon as it begins.
pub struct Stop {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    quit: Signal,
}

impl Stop {
    pub fn install() -> Result<Stop> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Stop {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
            quit: install(SignalKind::quit(), "SIGQUIT")?,
        })
    }

    /// Resolves when one of the signals arrives (or has arrived).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
            _ = self.quit.recv() => {}
        }
    }
}

/// Feeds `consumer` every batch of events, and ticks it every `tick`, until
/// `duration` passes or a `stop` signal arrives.
pub async fn pump(
    tracer: &mut Tracer,
    stop: &mut Stop,
    duration: Option<Duration>,
    tick: Duration,
    consumer: &mut impl Consumer,
) -> Result<()> {
    // Saturating: an absurd duration means "until a signal".
    let deadline = duration.and_then(|d| tokio::time::Instant::now().checked_add(d));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The kernel wakes us only when the ring fills up (see HookConfig): a
    // timer picks up the rest.
    let mut drains = tokio::time::interval(DRAIN_INTERVAL);
    drains.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            read = tracer.read(&mut batch) => read?,
            _ = drains.tick() => tracer.drain(&mut batch),
            _ = ticks.tick() => {
                consumer.tick(tracer);
                continue;
            }
            () = stop.recv() => break,
            () = sleep_until(deadline) => break,
        }
        consumer.batch(tracer, &mut batch)?;
        // A burst can leave a huge buffer behind: do not keep it for hours.
        batch.shrink_to(BATCH_KEEP);
    }
    // Whatever the kernel wrote before we stopped still counts.
    tracer.drain(&mut batch);
    consumer.batch(tracer, &mut batch)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A current-thread runtime: leakbpf reads one ring buffer.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
