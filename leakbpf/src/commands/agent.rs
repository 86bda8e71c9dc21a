//! `leakbpf agent`: flags and config file in, the library's agent out,
//! stopped by SIGINT, SIGTERM, SIGHUP or SIGQUIT.
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::session;
use crate::{
    agent::{
        AgentOptions,
        config::{ConfigFile, Settings},
    },
    cli::AgentArgs,
};

pub fn run(args: &AgentArgs) -> Result<ExitCode> {
    let settings = settings(args)?;
    let options = AgentOptions {
        settings,
        tracer: args.tracer.options(),
        cgroup_mount: args
            .tracer
            .cgroup_root
            .clone()
            .unwrap_or_else(|| "/sys/fs/cgroup".into()),
    };
    // One reader thread (this one) and one worker for HTTP: a request
    // never takes the reader's time.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("leakbpf-http")
        // Snapshots run on the blocking pool: keep one thread for them for
        // good, not a new thread (and a new malloc arena) every interval.
        .max_blocking_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let mut stop = session::Stop::install()?;
        crate::agent::run(options, async move { stop.recv().await }).await
    });
    // A snapshot still being taken is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result.map(|()| ExitCode::SUCCESS)
}

/// Flags over the config file over the defaults.
fn settings(args: &AgentArgs) -> Result<Settings> {
    let mut s = match &args.config {
        Some(path) => ConfigFile::read(path)?.settings()?,
        None => Settings::default(),
    };
    if let Some(listen) = args.listen {
        s.listen = listen;
    }
    if let Some(interval) = args.interval {
        s.interval = interval;
    }
    if let Some(window) = args.window {
        s.window = window;
    }
    if let Some(k) = args.top_k {
        s.top_k = k;
    }
    if let Some(idle) = args.idle {
        s.idle = idle;
    }
    if let Some(n) = args.max_sockets {
        s.max_sockets = n;
    }
    s.metric_labels.extend(args.metric_labels.iter().cloned());
    Ok(s)
}
