//! Loads the eBPF object, attaches the chosen hook set and reads events: the
//! only module that touches aya's maps. Every command starts one `Tracer`.
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as AyaHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
};
use leakbpf_common::{HookConfig, USER_STACK_ID_BIT, UserStack, lost};
use tokio::io::{Interest, unix::AsyncFd};

pub use crate::completeness::LostCounts;
use crate::{
    event::{self, Event},
    go_requests::{self, GoProbes},
    hooks::{Capabilities, HookChoice, HookSet},
    kernel::{offsets, tracefs, verifier::MissingHelper},
};

/// Takes map `name` out of the loaded object, as the kind of map it is.
fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} is missing"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// True for the id of a user stack the kernel side walked itself (kept in
/// `USER_STACKS`), false for a stack map index.
fn is_walked(id: u32) -> bool {
    id & (USER_STACK_ID_BIT << 1 | USER_STACK_ID_BIT) == USER_STACK_ID_BIT
}

/// Knobs shared by every command that traces.
// Each bool is a command-line switch of its own, not a state.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, Default)]
pub struct TracerOptions {
    pub hooks: HookChoice,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: Option<u32>,
    /// Print the kernel side's log records (rare failure paths) on stderr.
    pub log_kernel: bool,
    /// The cgroup v2 root to attach cgroup hooks to (`--cgroup-root`);
    /// found in the mounts when `None`.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Take the kernel stack at every open.
    pub kernel_stacks: bool,
    /// Send every fact (`events`), not only what the reports' socket table
    /// needs (see `HookConfig::lean`; that table must then forget sockets
    /// at their close: `Limits::forget_closed`).
    pub all_facts: bool,
    /// Name the Go request site of connects ([`crate::go_requests`]);
    /// `--no-go-uprobes` clears it.
    pub go_uprobes: bool,
}

pub struct Tracer {
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    hooks: HookSet,
    ring: AsyncFd<RingBuf<MapData>>,
    stacks: StackTraceMap<MapData>,
    /// User stacks the kernel side walked itself (ids with
    /// `USER_STACK_ID_BIT`).
    user_stacks: AyaHashMap<MapData, u32, UserStack>,
    /// Bumped before `user_stacks` loses entries: each CPU remembers the
    /// last stacks it kept there, for one generation.
    user_stacks_generation: Array<MapData, u64>,
    lost: PerCpuArray<MapData, u64>,
    undecodable: u64,
    /// With `--log-kernel`: the reader of the kernel side's aya-log records.
    kernel_log: Option<aya_log::EbpfLogger<KernelLog>>,
    unresolved_cookies: u64,
    /// The Go uprobes, when on.
    go: Option<GoProbes>,
    /// Why the Go uprobes are off although asked for.
    go_off: Option<String>,
}

/// How often the reader drains the ring without being woken: the latency
/// of a lone event (the kernel wakes it early when the ring fills).
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The compiled eBPF object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakbpf"));

impl Tracer {
    /// Probes the kernel, chooses a hook set, loads and attaches it. Must run
    /// inside a tokio runtime (the ring buffer registers with it).
    pub fn start(options: &TracerOptions) -> Result<Tracer> {
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
        let probe_trampolines = matches!(
            options.hooks,
            HookChoice::Auto | HookChoice::Set(HookSet::Fentry)
        );
        let offsets = offsets::read_offsets();
        let caps = Capabilities::probe(
            btf.as_ref()
                .zip(offsets.as_ref().ok())
                .filter(|_| probe_trampolines)
                .map(|(btf, offsets)| (EBPF_OBJECT, btf, offsets)),
            options.cgroup_root.as_deref(),
        );
        let hooks = caps.choose(options.hooks)?;
        let btf = btf.context("reading kernel BTF (/sys/kernel/btf/vmlinux)")?;
        let offsets = offsets.context("reading kernel offsets")?;
        let go_off = (options.go_uprobes && !go_requests::uprobes_available()).then(|| {
            "Go request sites are not named: this kernel has no uprobes \
             (/sys/bus/event_source/devices/uprobe)"
                .to_owned()
        });
        let go_on = options.go_uprobes && go_off.is_none();
        let config = hook_config(options, hooks, go_on);

        let mut loader = EbpfLoader::new();
        loader.override_global("OFFSETS", &offsets, true);
        loader.override_global("HOOKS", &config, true);
        if !options.log_kernel {
            // Level 0 enables nothing: the kernel side skips every log
            // statement instead of filling a ring nobody reads.
            loader.override_global(aya_log::LEVEL, &0u8, true);
        }
        if let Some(bytes) = options.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        hooks
            .attach(
                &mut ebpf,
                &caps,
                &btf,
                offsets.accept_arity,
                options.all_facts,
            )
            .map_err(|err| match MissingHelper::in_error(&err) {
                // One line instead of the verifier's log.
                Some(missing) => anyhow!(
                    "kernel {}: the {hooks} hook set needs {missing}",
                    caps.kernel_release
                ),
                None => err.context(format!("attaching the {hooks} hook set")),
            })?;

        let (go, go_off) = if go_on {
            match GoProbes::start(&mut ebpf) {
                Ok(go) => (Some(go), go_off),
                Err(err) => (
                    None,
                    Some(format!("Go request sites are not named: {err:#}")),
                ),
            }
        } else {
            (None, go_off)
        };

        let kernel_log = if options.log_kernel {
            Some(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog)
                    .context("starting the kernel log reader (--log-kernel)")?,
            )
        } else {
            None
        };

        // Parsing kernel BTF (offsets, program loads) peaks at tens of MiB
        // that are garbage now: give them back before tracing for hours.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };

        let ring: RingBuf<MapData> = take_map(&mut ebpf, "EVENTS")?;
        let stacks = take_map(&mut ebpf, "STACKS")?;
        let user_stacks = take_map(&mut ebpf, "USER_STACKS")?;
        let user_stacks_generation = take_map(&mut ebpf, "USER_STACKS_GENERATION")?;
        let lost = take_map(&mut ebpf, "LOST")?;
        // SAFETY: the ring buffer owns its fd and keeps it open until the
        // AsyncFd that owns the ring is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("registering the ring buffer with tokio: {err}"))?;
        Ok(Tracer {
            ebpf,
            hooks,
            ring,
            stacks,
            user_stacks,
            user_stacks_generation,
            lost,
            undecodable: 0,
            kernel_log,
            unresolved_cookies: 0,
            go,
            go_off,
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
        let from = out.len();
        self.undecodable += drain_into(inner, out);
        guard.clear_ready();
        self.flush_kernel_log();
        self.unresolved_cookies += resolve_cookies(out, from);
        self.observe_processes(&out[from..]);
        Ok(())
    }

    /// Appends whatever is in the ring now, without waiting (on the drain
    /// timer and at shutdown).
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        let from = out.len();
        self.undecodable += drain_into(self.ring.get_mut(), out);
        self.flush_kernel_log();
        self.unresolved_cookies += resolve_cookies(out, from);
        self.observe_processes(&out[from..]);
    }

    /// Probes the binary of each process at its first socket, and lets go
    /// of binaries whose processes ended (Go request sites).
    fn observe_processes(&mut self, events: &[Event]) {
        let Some(go) = &mut self.go else { return };
        for event in events {
            match event {
                Event::Open(open) => go.observe(&mut self.ebpf, open.task.pid),
                Event::Exit(exit) => go.exit(&mut self.ebpf, exit.task.pid),
                Event::Exec(exec) => {
                    // The pid runs another binary now: look at it anew.
                    go.exit(&mut self.ebpf, exec.task.pid);
                    go.observe(&mut self.ebpf, exec.task.pid);
                }
                _ => {}
            }
        }
    }

    /// True while the Go uprobes are on.
    pub fn probing_go(&self) -> bool {
        self.go.is_some()
    }

    /// Why Go request sites are missing: uprobes unavailable, binaries that
    /// could not be probed.
    pub fn go_warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self.go_off.iter().cloned().collect();
        if let Some(go) = &self.go {
            warnings.extend(go.warnings().iter().cloned());
        }
        warnings
    }

    /// Prints the kernel log records that arrived (`--log-kernel`).
    fn flush_kernel_log(&mut self) {
        if let Some(logger) = &mut self.kernel_log {
            logger.flush();
        }
    }

    /// Instruction pointers of a recorded stack, innermost first.
    pub fn stack(&self, id: u32) -> Option<Vec<u64>> {
        if is_walked(id) {
            let stack = self.user_stacks.get(&id, 0).ok()?;
            let depth = (stack.depth as usize).min(stack.ips.len());
            return Some(stack.ips[..depth].to_vec());
        }
        let trace = self.stacks.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|frame| frame.ip).collect())
    }

    /// Deletes the kernel stack-map entries `keep` rejects; returns how
    /// many entries there were and the ids deleted (their caches must go:
    /// the kernel reuses a freed id for another stack). Without this the
    /// map only fills, and a long run starts losing stacks.
    pub fn prune_stacks(&mut self, keep: impl Fn(u32) -> bool) -> (usize, Vec<u32>) {
        let mut ids: Vec<u32> = self.stacks.stack_ids().filter_map(Result::ok).collect();
        ids.extend(self.user_stacks.keys().filter_map(Result::ok));
        // The kernel side's CPUs each remember the last walked stacks they
        // kept, and reuse their ids without looking: end that memory before
        // an entry goes, or one would name a deleted (or reused) entry.
        let walked_may_go =
            ids.iter().any(|id| is_walked(*id) && !keep(*id)) && self.bump_user_stacks_generation();
        let pruned = ids
            .iter()
            .copied()
            .filter(|id| {
                !keep(*id)
                    && if is_walked(*id) {
                        walked_may_go && self.user_stacks.remove(id).is_ok()
                    } else {
                        self.stacks.remove(id).is_ok()
                    }
            })
            .collect();
        (ids.len(), pruned)
    }

    /// Starts a new generation of `USER_STACKS` entries; false if the map
    /// refused the write (nothing may be deleted then).
    fn bump_user_stacks_generation(&mut self) -> bool {
        let next = self
            .user_stacks_generation
            .get(&0, 0)
            .unwrap_or(0)
            .wrapping_add(1);
        self.user_stacks_generation.set(0, &next, 0).is_ok()
    }

    pub fn lost(&self) -> LostCounts {
        let sum = |index: u32| -> u64 {
            self.lost
                .get(&index, 0)
                .map_or(0, |values| values.iter().sum())
        };
        LostCounts {
            ringbuf_full: sum(lost::RINGBUF_FULL),
            user_stacks: sum(lost::USER_STACK),
            kernel_stacks: sum(lost::KERNEL_STACK),
            accept_reads: sum(lost::ACCEPT_READ),
            undecodable: self.undecodable,
            unresolved_cookies: self.unresolved_cookies,
        }
    }
}

/// Writes each kernel log record (aya-log) to stderr as one line.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("{}", kernel_log_line(record));
    }

    fn flush(&self) {}
}

/// `leakbpf: kernel: MESSAGE`, the message on one line.
fn kernel_log_line(record: &log::Record<'_>) -> String {
    let message = record.args().to_string().replace('\n', " ");
    format!("leakbpf: kernel: {message}")
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

/// Gives opens from `out[from..]` that came without a cookie their real
/// one, and drops (and counts) those it cannot name.
///
/// Why: the kprobe and tracepoint sets read `sk_cookie`, which only the
/// state tracepoint's `bpf_get_socket_cookie` sets. The kernel skips a BPF
/// program that would run nested in itself on one CPU (a softirq handling
/// a handshake while the program runs in process context), so now and then
/// an accepted socket reaches its open with no cookie. sock_diag generates
/// the cookie when it reports the socket, and every later event reads it.
fn resolve_cookies(out: &mut Vec<Event>, from: usize) -> u64 {
    let mut unresolved = 0;
    let mut index = from;
    while index < out.len() {
        if let Event::Open(open) = &mut out[index]
            && open.cookie == 0
        {
            if let Some(cookie) =
                crate::sockets::diag::cookie_of(open.endpoints.local(), open.endpoints.remote())
            {
                open.cookie = cookie;
            } else {
                out.remove(index);
                unresolved += 1;
                continue;
            }
        }
        index += 1;
    }
    unresolved
}

/// The capabilities tracing needs (see [`crate::privileges`]): one line
/// naming a missing one instead of an EPERM later.
pub fn require_root() -> Result<()> {
    let eff = crate::privileges::effective();
    crate::privileges::require(eff, &crate::privileges::TRACING)?;
    if let Some(warning) = crate::privileges::symbols_warning(eff) {
        eprintln!("leakbpf: warning: {warning}");
    }
    Ok(())
}

/// What the kernel side is told before load (see `HookConfig`).
fn hook_config(options: &TracerOptions, hooks: HookSet, go_on: bool) -> HookConfig {
    let ring_bytes = options
        .ring_bytes
        .unwrap_or(leakbpf_common::DEFAULT_RING_BYTES);
    HookConfig {
        connect_from_state: u32::from(hooks.connect_from_state()),
        // A quarter full: early enough that a burst never fills it
        // between the reader's timer drains.
        wakeup_bytes: ring_bytes / 4,
        state_mask: if options.all_facts {
            leakbpf_common::ALL_STATES
        } else {
            leakbpf_common::REPORT_STATES
        },
        kernel_stacks: u32::from(options.kernel_stacks),
        lean: u32::from(!options.all_facts),
        go_requests: u32::from(go_on),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn walked_stack_ids_are_told_from_stack_map_indices() {
        use leakbpf_common::USER_STACK_ID_BIT as WALKED;
        assert!(!super::is_walked(0));
        assert!(!super::is_walked(16383));
        assert!(super::is_walked(WALKED));
        assert!(super::is_walked(WALKED | 0x2bad_cafe & (WALKED - 1)));
        // Ids the resolver gives stacks that came through the ring.
        assert!(!super::is_walked(1 << 31));
        assert!(!super::is_walked(1 << 31 | WALKED));
    }

    use super::*;

    #[test]
    fn a_kernel_log_record_is_one_prefixed_line() {
        let line = kernel_log_line(
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("leakbpf")
                .args(format_args!(
                    "user stack of pid {} not recorded:\nerror {}",
                    4242, -14
                ))
                .build(),
        );
        assert_eq!(
            line,
            "leakbpf: kernel: user stack of pid 4242 not recorded: error -14"
        );
    }

    use std::net::{TcpListener, TcpStream};

    use crate::event::{Direction, Endpoints, Open, Stack, Task, TcpState};

    fn open(cookie: u64, local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Event {
        Event::Open(Box::new(Open {
            time_ns: 1,
            cookie,
            task: Task {
                pid: 1,
                tid: 1,
                cgroup_id: 0,
                comm: "p".into(),
                start_ns: 0,
            },
            endpoints: Endpoints::new(local, remote, TcpState::Established),
            direction: Direction::Accept,
            fd: None,
            user_stack: Stack::Id(1),
            kernel_stack: Stack::Id(2),
            user_sp: 0,
            request_stack: Stack::NOT_PROBED,
            user_stack_top: [0; leakbpf_common::USER_STACK_TOP_WORDS],
            leaf_caller: None,
        }))
    }

    #[test]
    #[ignore = "host: real sockets and sock_diag on this kernel; `./x test` runs it"]
    fn opens_without_a_cookie_get_theirs_or_are_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (local, remote) = (
            accepted.local_addr().unwrap(),
            accepted.peer_addr().unwrap(),
        );
        let gone = "127.0.0.1:1".parse().unwrap();
        let mut events = vec![
            open(7, gone, remote), // before `from`: untouched
            open(0, local, remote),
            open(0, gone, remote),
            open(9, gone, remote),
        ];
        assert_eq!(resolve_cookies(&mut events, 1), 1);
        let cookies: Vec<u64> = events.iter().map(Event::cookie).collect();
        assert_eq!(cookies.len(), 3);
        assert_eq!(cookies[0], 7);
        assert_ne!(cookies[1], 0);
        assert_eq!(cookies[2], 9);
    }
}
