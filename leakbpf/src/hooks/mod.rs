//! The one seam for hook sets: probe what this kernel allows, choose the best
//! set that works, and say which. Every set feeds the same events into the
//! same ring buffer, so nothing past this module knows which one ran.
//!
//! | set | connect / accept / close | needs |
//! |---|---|---|
//! | `fentry` | fentry tcp_connect, fexit inet_csk_accept, fentry tcp_close | BPF trampolines (5.5+, x86_64; 5.17+ elsewhere), BTF |
//! | `kprobe` | kprobe tcp_connect, kretprobe inet_csk_accept, kprobe tcp_close | CONFIG_KPROBES, BTF |
//! | `tracepoint` | tp_btf inet_sock_set_state, syscalls:sys_exit_accept{,4}, cgroup/sock_release | BTF (5.5+), cgroup v2 |
//!
//! All three share tp_btf/inet_sock_set_state (state changes),
//! tcp:tcp_destroy_sock and tp_btf/sched_process_free.
mod attach;

use std::{fmt, fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{Btf, Ebpf, EbpfLoader, programs::FEntry};

use crate::kernel::tracefs;

/// What the user asked for (`--hooks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// The best set this kernel allows: fentry, else kprobe, else tracepoint.
    #[default]
    Auto,
    /// BPF trampolines on tcp_connect, inet_csk_accept and tcp_close.
    Fentry,
    /// Kprobes on tcp_connect, inet_csk_accept and tcp_close.
    Kprobe,
    /// Stable tracepoints + a cgroup socket hook (no kprobes, no trampolines).
    Tracepoint,
}

/// A set of programs that together produce every lifecycle event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSet {
    Fentry,
    Kprobe,
    Tracepoint,
}

/// The kernel functions the fentry and kprobe sets hook.
pub const FUNCTIONS: [&str; 3] = ["tcp_connect", "inet_csk_accept", "tcp_close"];

impl HookSet {
    /// Best first: precise and cheap, then cheap, then portable.
    const PREFERENCE: [HookSet; 3] = [HookSet::Fentry, HookSet::Kprobe, HookSet::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            HookSet::Fentry => "fentry",
            HookSet::Kprobe => "kprobe",
            HookSet::Tracepoint => "tracepoint",
        }
    }

    /// The hooks, as a user would look them up.
    pub fn describe(self) -> &'static str {
        match self {
            HookSet::Fentry => {
                "fentry/tcp_connect (connect), fexit/inet_csk_accept (accept), \
                 fentry/tcp_close (close), plus the shared state, destroy and process-end tracepoints"
            }
            HookSet::Kprobe => {
                "kprobe/tcp_connect (connect), kretprobe/inet_csk_accept (accept), \
                 kprobe/tcp_close (close), plus the shared state, destroy and process-end tracepoints"
            }
            HookSet::Tracepoint => {
                "tp_btf/inet_sock_set_state (connect, state), \
                 tracepoint/syscalls/sys_exit_accept{,4} (accept), \
                 cgroup/sock_release (close), tracepoint/tcp/tcp_destroy_sock (destroy), \
                 tp_btf/sched_process_free (process end)"
            }
        }
    }

    /// Whether the state tracepoint reports connects (see `HookConfig`).
    pub fn connect_from_state(self) -> bool {
        self == HookSet::Tracepoint
    }

    /// Loads and attaches this set's programs.
    pub fn attach(
        self,
        ebpf: &mut Ebpf,
        caps: &Capabilities,
        btf: &Btf,
        accept_arity: u32,
    ) -> Result<()> {
        attach::shared(ebpf, btf)?;
        match self {
            HookSet::Fentry => attach::fentry_set(ebpf, btf, accept_arity),
            HookSet::Kprobe => attach::kprobe_set(ebpf),
            HookSet::Tracepoint => attach::tracepoint_set(ebpf, caps),
        }
    }
}

impl fmt::Display for HookSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Tracepoints the sets attach to, as (system, event): the first three are
/// shared, the accept exits are the tracepoint set's own.
pub const TRACEPOINTS: [(&str, &str); 5] = [
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_destroy_sock"),
    ("sched", "sched_process_free"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
];

/// Whether this kernel runs BPF trampolines, found by loading one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trampolines {
    Work,
    Refused(String),
}

/// What this kernel offers, as far as leakbpf cares.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub kernel_release: String,
    /// /sys/kernel/btf/vmlinux: needed for tp_btf and for every offset.
    pub btf: bool,
    pub tracefs: Option<PathBuf>,
    /// Each of [`TRACEPOINTS`], present or not.
    pub tracepoints: Vec<((&'static str, &'static str), bool)>,
    /// Mount point of the cgroup v2 hierarchy (sock_release attaches there).
    pub cgroup2: Option<PathBuf>,
    /// A kprobe PMU exists (CONFIG_KPROBES).
    pub kprobes: bool,
    /// Each of [`FUNCTIONS`], present in /proc/kallsyms or not (inlined or
    /// renamed functions cannot be hooked).
    pub functions: Vec<(&'static str, bool)>,
    pub trampolines: Trampolines,
}

impl Capabilities {
    /// Probes the running kernel. With `trampoline_probe` (the eBPF object
    /// and the kernel's BTF), one fentry program is loaded to see whether
    /// trampolines work; without it they count as refused (not asked for).
    pub fn probe(trampoline_probe: Option<(&[u8], &Btf)>) -> Self {
        let tracefs = tracefs::Tracefs::find()
            .ok()
            .map(|t| t.root().to_path_buf());
        let tracepoints = TRACEPOINTS
            .iter()
            .map(|&(system, event)| ((system, event), tracefs::tracepoint_exists(system, event)))
            .collect();
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let functions = FUNCTIONS
            .iter()
            .map(|&name| (name, kallsyms_has(&kallsyms, name)))
            .collect();
        Capabilities {
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            btf: fs::metadata("/sys/kernel/btf/vmlinux").is_ok(),
            tracefs,
            tracepoints,
            cgroup2: cgroup2_mount(),
            kprobes: fs::metadata("/sys/bus/event_source/devices/kprobe").is_ok(),
            functions,
            trampolines: match trampoline_probe {
                Some((object, btf)) => probe_trampolines(object, btf),
                None => {
                    Trampolines::Refused("not probed: another hook set was asked for".to_owned())
                }
            },
        }
    }

    /// What `set` needs that this kernel lacks, one phrase each.
    pub fn missing_for(&self, set: HookSet) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.btf {
            missing.push("kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)".to_owned());
        }
        if self.tracefs.is_none() {
            missing.push("tracefs (mount it on /sys/kernel/tracing)".to_owned());
        }
        let shared = if set == HookSet::Tracepoint { 5 } else { 3 };
        for ((system, event), present) in &self.tracepoints[..shared] {
            if !present && self.tracefs.is_some() {
                missing.push(format!("tracepoint {system}:{event}"));
            }
        }
        let functions = || {
            self.functions
                .iter()
                .filter(|(_, present)| !present)
                .map(|(name, _)| format!("kernel function {name} (not in /proc/kallsyms)"))
        };
        match set {
            HookSet::Fentry => {
                if let Trampolines::Refused(why) = &self.trampolines {
                    missing.push(format!(
                        "BPF trampolines (fentry/fexit), which this kernel refuses: {why}"
                    ));
                }
                missing.extend(functions());
            }
            HookSet::Kprobe => {
                if !self.kprobes {
                    missing.push(
                        "kprobes (CONFIG_KPROBES): /sys/bus/event_source/devices/kprobe is missing"
                            .to_owned(),
                    );
                }
                missing.extend(functions());
            }
            HookSet::Tracepoint => {
                if self.cgroup2.is_none() {
                    missing.push("a cgroup v2 mount (for cgroup/sock_release)".to_owned());
                }
            }
        }
        missing
    }

    /// The set to use: the one asked for, or the best that this kernel has.
    pub fn choose(&self, choice: HookChoice) -> Result<HookSet> {
        let wanted: &[HookSet] = match choice {
            HookChoice::Auto => &HookSet::PREFERENCE,
            HookChoice::Fentry => &[HookSet::Fentry],
            HookChoice::Kprobe => &[HookSet::Kprobe],
            HookChoice::Tracepoint => &[HookSet::Tracepoint],
        };
        for &set in wanted {
            if self.missing_for(set).is_empty() {
                return Ok(set);
            }
        }
        let reasons: Vec<String> = wanted
            .iter()
            .map(|&set| {
                format!(
                    "the {set} hook set needs {}",
                    self.missing_for(set).join(", ")
                )
            })
            .collect();
        bail!("kernel {}: {}", self.kernel_release, reasons.join("; "))
    }
}

/// Loads (then drops) fentry/tcp_close: BPF_PROG_LOAD is where a kernel
/// without trampolines says no. The maps are made tiny: nothing runs.
fn probe_trampolines(object: &[u8], btf: &Btf) -> Trampolines {
    let refused = |err: &dyn fmt::Display| Trampolines::Refused(err.to_string());
    let mut ebpf = match EbpfLoader::new()
        .map_max_entries("EVENTS", 4096)
        .map_max_entries("STACKS", 1)
        .load(object)
    {
        Ok(ebpf) => ebpf,
        Err(err) => return refused(&err),
    };
    let program: Result<&mut FEntry> = attach::program_mut(&mut ebpf, "fentry_tcp_close");
    match program.and_then(|p| p.load("tcp_close", btf).context("loading fentry/tcp_close")) {
        Ok(()) => Trampolines::Work,
        // The verifier got as far as the helpers: trampolines load, and the
        // missing helper is named when the set is attached.
        Err(err) if crate::kernel::verifier::MissingHelper::in_error(&err).is_some() => {
            Trampolines::Work
        }
        Err(err) => refused(&format_args!("{err:#}")),
    }
}

/// Whether /proc/kallsyms text lists function `name`.
fn kallsyms_has(kallsyms: &str, name: &str) -> bool {
    kallsyms.lines().any(|line| {
        let mut fields = line.split_whitespace();
        matches!(fields.nth(1), Some("T" | "t")) && fields.next() == Some(name)
    })
}

/// First cgroup2 mount in /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // "... mount_point ... - fstype source options"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_in_kallsyms_text() {
        let kallsyms = "\
ffffffff81e30f19 T __sys_connect
ffffffff82031409 T tcp_connect
ffffffff82031500 t tcp_close\t[some_module]
ffffffff82031600 D tcp_hashinfo
";
        assert!(kallsyms_has(kallsyms, "tcp_connect"));
        assert!(kallsyms_has(kallsyms, "tcp_close"));
        assert!(
            !kallsyms_has(kallsyms, "tcp_hashinfo"),
            "data, not a function"
        );
        assert!(!kallsyms_has(kallsyms, "inet_csk_accept"));
    }

    fn caps() -> Capabilities {
        Capabilities {
            kernel_release: "6.18".to_owned(),
            btf: true,
            tracefs: Some("/sys/kernel/tracing".into()),
            tracepoints: TRACEPOINTS.iter().map(|&tp| (tp, true)).collect(),
            cgroup2: Some("/sys/fs/cgroup".into()),
            kprobes: false,
            functions: FUNCTIONS.iter().map(|&f| (f, true)).collect(),
            trampolines: Trampolines::Refused("EPERM".to_owned()),
        }
    }

    #[test]
    fn auto_takes_the_best_set_that_works() {
        let mut caps = caps();
        assert_eq!(caps.choose(HookChoice::Auto).unwrap(), HookSet::Tracepoint);
        caps.kprobes = true;
        assert_eq!(caps.choose(HookChoice::Auto).unwrap(), HookSet::Kprobe);
        caps.trampolines = Trampolines::Work;
        assert_eq!(caps.choose(HookChoice::Auto).unwrap(), HookSet::Fentry);
    }

    #[test]
    fn a_forced_set_the_kernel_lacks_names_what_is_missing() {
        let caps = caps();
        let err = caps.choose(HookChoice::Kprobe).unwrap_err().to_string();
        assert_eq!(
            err,
            "kernel 6.18: the kprobe hook set needs kprobes (CONFIG_KPROBES): \
             /sys/bus/event_source/devices/kprobe is missing"
        );
        let err = caps.choose(HookChoice::Fentry).unwrap_err().to_string();
        assert_eq!(
            err,
            "kernel 6.18: the fentry hook set needs BPF trampolines (fentry/fexit), \
             which this kernel refuses: EPERM"
        );
        let mut no_cgroup = caps.clone();
        no_cgroup.cgroup2 = None;
        no_cgroup.tracepoints[3].1 = false;
        let err = no_cgroup
            .choose(HookChoice::Tracepoint)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kernel 6.18: the tracepoint hook set needs tracepoint syscalls:sys_exit_accept, \
             a cgroup v2 mount (for cgroup/sock_release)"
        );
    }
}
