//! The one seam for hook sets: probe what this kernel allows, choose the best
//! set that works, and say which. Every set feeds the same events into the
//! same ring buffer, so nothing past this module knows which one ran.
//!
//! Preference for `auto`: the tracepoint set is the only one in this build;
//! sets on tcp_connect/inet_csk_accept/tcp_close (trampolines, kprobes) slot
//! in ahead of it here, each with its own `attach` and requirement probe.
mod tracepoint;

use std::{fmt, fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;

use crate::kernel::tracefs;

/// What the user asked for (`--hooks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// The best set this kernel allows.
    #[default]
    Auto,
    /// Stable tracepoints + cgroup socket hooks (no kprobes, no trampolines).
    Tracepoint,
}

/// A set of programs that together produce every lifecycle event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSet {
    Tracepoint,
}

impl HookSet {
    /// Best first.
    const PREFERENCE: [HookSet; 1] = [HookSet::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            HookSet::Tracepoint => "tracepoint",
        }
    }

    /// The hooks, as a user would look them up.
    pub fn describe(self) -> &'static str {
        match self {
            HookSet::Tracepoint => {
                "tp_btf/inet_sock_set_state (connect, state), \
                 tracepoint/syscalls/sys_exit_accept{,4} (accept), \
                 cgroup/sock_release (close), tracepoint/tcp/tcp_destroy_sock (destroy), \
                 tracepoint/sched/sched_process_exit (exit)"
            }
        }
    }

    /// Loads and attaches this set's programs.
    pub fn attach(self, ebpf: &mut Ebpf, caps: &Capabilities) -> Result<()> {
        match self {
            HookSet::Tracepoint => tracepoint::attach(ebpf, caps),
        }
    }
}

impl fmt::Display for HookSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Tracepoints the tracepoint set attaches to, as (system, event).
pub const TRACEPOINTS: [(&str, &str); 5] = [
    ("sock", "inet_sock_set_state"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
    ("tcp", "tcp_destroy_sock"),
    ("sched", "sched_process_exit"),
];

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
}

impl Capabilities {
    pub fn probe() -> Self {
        let tracefs = tracefs::Tracefs::find()
            .ok()
            .map(|t| t.root().to_path_buf());
        let tracepoints = TRACEPOINTS
            .iter()
            .map(|&(system, event)| ((system, event), tracefs::tracepoint_exists(system, event)))
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
        }
    }

    /// What `set` needs that this kernel lacks, one phrase each.
    pub fn missing_for(&self, set: HookSet) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.btf {
            missing.push("kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)".to_owned());
        }
        match set {
            HookSet::Tracepoint => {
                if self.tracefs.is_none() {
                    missing.push("tracefs (mount it on /sys/kernel/tracing)".to_owned());
                }
                for ((system, event), present) in &self.tracepoints {
                    if !present && self.tracefs.is_some() {
                        missing.push(format!("tracepoint {system}:{event}"));
                    }
                }
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
            HookChoice::Tracepoint => &[HookSet::Tracepoint],
        };
        for &set in wanted {
            if self.missing_for(set).is_empty() {
                return Ok(set);
            }
        }
        let reasons: Vec<String> = wanted
            .iter()
            .map(|&set| format!("{set} needs {}", self.missing_for(set).join(", ")))
            .collect();
        bail!(
            "no usable hook set on kernel {}: {}",
            self.kernel_release,
            reasons.join("; ")
        )
    }
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

/// Opens the cgroup2 root for attaching.
pub(crate) fn open_cgroup_root(caps: &Capabilities) -> Result<fs::File> {
    let path = caps
        .cgroup2
        .as_ref()
        .context("no cgroup v2 mount found in /proc/self/mountinfo")?;
    fs::File::open(path).with_context(|| format!("opening cgroup {}", path.display()))
}
