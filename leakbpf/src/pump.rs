//! The event pump shared by `trace` and `events`: read batches until the
//! duration ends or `stop` resolves, then drain what the kernel still holds.
//! It installs no signal handlers: the caller decides what stops it (the
//! commands pass their signal handlers, tests a timer or a channel).
use std::{future::Future, time::Duration};

use anyhow::Result;

use crate::{
    event::Event,
    tracer::{DRAIN_INTERVAL, Tracer},
};

/// Events' worth of buffer kept between batches: a wakeup's worth (a
/// quarter of the default ring is about 6,700 records under churn). With
/// 1,024 the buffer was shrunk after every wakeup and grown again by the
/// next, copying it and faulting in fresh pages each time (perf, tenth
/// session). 8,192 events are 576 KiB.
pub const BATCH_KEEP: usize = 8192;

/// What a command does with the events.
pub trait Consumer {
    /// Takes (drains) a batch of events.
    fn batch(&mut self, tracer: &Tracer, events: &mut Vec<Event>) -> Result<()>;
    /// Called every tick (for progress).
    fn tick(&mut self, _tracer: &Tracer) {}
}

/// Feeds `consumer` every batch of events, and ticks it every `tick`, until
/// `duration` passes or `stop` resolves.
pub async fn pump(
    tracer: &mut Tracer,
    stop: impl Future<Output = ()>,
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
    tokio::pin!(stop);
    loop {
        tokio::select! {
            read = tracer.read(&mut batch) => read?,
            _ = drains.tick() => tracer.drain(&mut batch),
            _ = ticks.tick() => {
                consumer.tick(tracer);
                continue;
            }
            () = &mut stop => break,
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
