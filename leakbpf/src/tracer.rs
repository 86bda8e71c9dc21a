//! Loads the eBPF object, attaches the chosen hook set and reads events: the
//! only module that touches aya's maps. Every command starts one `Tracer`.
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
};
use leakbpf_common::{HookConfig, lost};
use serde::Serialize;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    event::{self, Event},
    hooks::{Capabilities, HookChoice, HookSet},
    kernel::{offsets, tracefs, verifier::MissingHelper},
};

/// Knobs shared by every command that traces.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracerOptions {
    pub hooks: HookChoice,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: Option<u32>,
}

/// Everything that was dropped, in the kernel or while decoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostCounts {
    /// Events the ring buffer had no room for.
    pub ringbuf_full: u64,
    /// Open events whose user stack could not be recorded.
    pub user_stacks: u64,
    /// Open events whose kernel stack could not be recorded.
    pub kernel_stacks: u64,
    /// Accepts whose socket could not be read (not reported).
    pub accept_reads: u64,
    /// Records user space could not decode.
    pub undecodable: u64,
}

impl LostCounts {
    /// Lost lifecycle events: what makes a socket count wrong.
    pub fn events(&self) -> u64 {
        self.ringbuf_full + self.accept_reads + self.undecodable
    }

    /// Lost stacks: what makes an attribution to code incomplete.
    pub fn stacks(&self) -> u64 {
        self.user_stacks + self.kernel_stacks
    }
}

pub struct Tracer {
    // Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    hooks: HookSet,
    ring: AsyncFd<RingBuf<MapData>>,
    stacks: StackTraceMap<MapData>,
    lost: PerCpuArray<MapData, u64>,
    undecodable: u64,
}

/// Size of `EVENTS` in leakbpf-ebpf/src/emit.rs.
const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// How often the reader drains the ring without being woken: the latency
/// of a lone event (the kernel wakes it early when the ring fills).
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The compiled eBPF object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakbpf"));

impl Tracer {
    /// Probes the kernel, chooses a hook set, loads and attaches it. Must run
    /// inside a tokio runtime (the ring buffer registers with it).
    pub fn start(options: TracerOptions) -> Result<Tracer> {
        if let Some(bytes) = options.ring_bytes
            && (!bytes.is_power_of_two() || bytes < 4096)
        {
            bail!("--ring-bytes must be a power of two of at least 4096, not {bytes}");
        }
        require_root()?;
        tracefs::ensure_mounted()?;
        // Parsed once, for the trampoline probe and every program load; a
        // missing BTF is reported by `choose` among what the sets need.
        let btf = Btf::from_sys_fs().ok();
        let probe_trampolines = matches!(options.hooks, HookChoice::Auto | HookChoice::Fentry);
        let caps = Capabilities::probe(
            btf.as_ref()
                .filter(|_| probe_trampolines)
                .map(|btf| (EBPF_OBJECT, btf)),
        );
        let hooks = caps.choose(options.hooks)?;
        let btf = btf.context("reading kernel BTF (/sys/kernel/btf/vmlinux)")?;
        let offsets = offsets::read_offsets().context("reading kernel offsets")?;
        let ring_bytes = options.ring_bytes.unwrap_or(DEFAULT_RING_BYTES);
        let config = HookConfig {
            connect_from_state: u32::from(hooks.connect_from_state()),
            // A quarter full: early enough that a burst never fills it
            // between the reader's timer drains.
            wakeup_bytes: ring_bytes / 4,
        };

        let mut loader = EbpfLoader::new();
        loader.override_global("OFFSETS", &offsets, true);
        loader.override_global("HOOKS", &config, true);
        if let Some(bytes) = options.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        hooks
            .attach(&mut ebpf, &caps, &btf, offsets.accept_arity)
            .map_err(|err| match MissingHelper::in_error(&err) {
                // One line instead of the verifier's log.
                Some(missing) => anyhow!(
                    "kernel {}: the {hooks} hook set needs {missing}",
                    caps.kernel_release
                ),
                None => err.context(format!("attaching the {hooks} hook set")),
            })?;

        // Parsing kernel BTF (offsets, program loads) peaks at tens of MiB
        // that are garbage now: give them back before tracing for hours.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };

        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS")?)?;
        let stacks = StackTraceMap::try_from(ebpf.take_map("STACKS").context("map STACKS")?)?;
        let lost = PerCpuArray::try_from(ebpf.take_map("LOST").context("map LOST")?)?;
        // SAFETY: the ring buffer owns its fd and keeps it open until the
        // AsyncFd that owns the ring is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("registering the ring buffer with tokio: {err}"))?;
        Ok(Tracer {
            _ebpf: ebpf,
            hooks,
            ring,
            stacks,
            lost,
            undecodable: 0,
        })
    }

    pub fn hooks(&self) -> HookSet {
        self.hooks
    }

    /// Waits until events are available, then appends all of them to `out`.
    pub async fn read(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        let inner = guard.get_inner_mut();
        self.undecodable += drain_into(inner, out);
        guard.clear_ready();
        Ok(())
    }

    /// Appends whatever is in the ring now, without waiting (at shutdown).
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        self.undecodable += drain_into(self.ring.get_mut(), out);
    }

    /// Instruction pointers of a recorded stack, innermost first.
    pub fn stack(&self, id: u32) -> Option<Vec<u64>> {
        let trace = self.stacks.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|frame| frame.ip).collect())
    }

    pub fn lost(&self) -> LostCounts {
        let sum = |index: u32| -> u64 {
            self.lost
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        LostCounts {
            ringbuf_full: sum(lost::RINGBUF_FULL),
            user_stacks: sum(lost::USER_STACK),
            kernel_stacks: sum(lost::KERNEL_STACK),
            accept_reads: sum(lost::ACCEPT_READ),
            undecodable: self.undecodable,
        }
    }
}

/// Decodes every record in the ring into `out`; returns how many failed.
fn drain_into(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>) -> u64 {
    let mut undecodable = 0;
    while let Some(record) = ring.next() {
        match event::decode(&record) {
            Ok(event) => out.push(event),
            Err(_) => undecodable += 1,
        }
    }
    undecodable
}

/// Loading eBPF needs CAP_BPF + CAP_PERFMON (+ CAP_NET_ADMIN for cgroup
/// hooks); in practice, root. Say so in one line instead of an EPERM later.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "leakbpf needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN) to load eBPF programs; run it with sudo"
        );
    }
    Ok(())
}
