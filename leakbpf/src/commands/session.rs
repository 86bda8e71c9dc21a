//! What the tracing commands share around the library's pump: the signals
//! that stop them, the start-up line, the runtime.
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::tracer::Tracer;

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

/// A current-thread runtime: leakbpf reads one ring buffer.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
