//! The hook sets, declared once: which programs each attaches and where,
//! what the kernel must offer, and since which Linux release. Probing
//! (`Capabilities::missing_for`), attaching (`attach.rs`), `leakbpf check`
//! and the `--hooks` help all read these tables; the README's "Hook sets
//! and kernels" table mirrors them and a unit test below compares the two.
use super::HookSet;

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// BTF-typed tracepoint; the target is `system:event`.
    TpBtf,
    /// Classic tracepoint; the target is `system:event`.
    Tracepoint,
    /// cgroup socket hook on the cgroup v2 root; the target is the attach type.
    Cgroup,
    /// BPF trampoline on a kernel function's entry.
    Fentry,
    /// BPF trampoline on a kernel function's return.
    Fexit,
    Kprobe,
    Kretprobe,
}

impl ProgramKind {
    /// As the kernel and the README spell it (`kind/target`).
    pub fn name(self) -> &'static str {
        match self {
            ProgramKind::TpBtf => "tp_btf",
            ProgramKind::Tracepoint => "tracepoint",
            ProgramKind::Cgroup => "cgroup",
            ProgramKind::Fentry => "fentry",
            ProgramKind::Fexit => "fexit",
            ProgramKind::Kprobe => "kprobe",
            ProgramKind::Kretprobe => "kretprobe",
        }
    }

    /// Whether the target is a kernel function (that must be in kallsyms).
    pub fn hooks_function(self) -> bool {
        matches!(
            self,
            ProgramKind::Fentry | ProgramKind::Fexit | ProgramKind::Kprobe | ProgramKind::Kretprobe
        )
    }
}

/// One program of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The program's name in the eBPF object (`leakbpf-ebpf/src/*.rs`).
    pub name: &'static str,
    pub kind: ProgramKind,
    /// Function, tracepoint (`system:event` for classic ones) or cgroup
    /// attach type.
    pub target: &'static str,
    /// What it reports.
    pub reports: &'static str,
    /// Loaded only when the kernel's `inet_csk_accept` takes this many
    /// parameters (one fexit program per signature, see trampoline_set.rs).
    pub accept_arity: Option<u32>,
    /// Attached only when every fact is wanted (`events`): the reports
    /// have no use for it, and an attached program costs every run.
    pub events_only: bool,
}

impl Program {
    const fn new(
        name: &'static str,
        kind: ProgramKind,
        target: &'static str,
        reports: &'static str,
    ) -> Self {
        Program {
            name,
            kind,
            target,
            reports,
            accept_arity: None,
            events_only: false,
        }
    }

    const fn events_only(mut self) -> Self {
        self.events_only = true;
        self
    }

    /// The `(system, event)` of a tracepoint, BTF-typed or classic.
    pub fn tracepoint(&self) -> Option<(&'static str, &'static str)> {
        matches!(self.kind, ProgramKind::Tracepoint | ProgramKind::TpBtf)
            .then(|| self.target.split_once(':'))
            .flatten()
    }

    /// `kind/target`, as a user would look it up (and as the ELF section
    /// names it).
    pub fn hook(&self) -> String {
        let target = match (self.kind, self.tracepoint()) {
            (ProgramKind::TpBtf, Some((_, event))) => event.to_owned(),
            (_, Some((system, event))) => format!("{system}/{event}"),
            (_, None) => self.target.to_owned(),
        };
        format!("{}/{target}", self.kind.name())
    }
}

/// A kernel feature some programs rely on, and the release that brought it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub what: &'static str,
    pub since: (u32, u32),
}

/// A hook set, declared.
#[derive(Clone, Copy, Debug)]
pub struct SetSpec {
    pub set: HookSet,
    /// `--hooks` value and the name reports show.
    pub name: &'static str,
    pub description: &'static str,
    /// This set's own programs; every set also attaches [`SHARED`].
    pub programs: &'static [Program],
    /// This set's own kernel features; every set also needs [`SHARED_FEATURES`].
    pub features: &'static [Feature],
}

impl SetSpec {
    /// Every program this set attaches: [`SHARED`], then its own.
    pub fn all_programs(&self) -> impl Iterator<Item = &'static Program> + use<> {
        SHARED.iter().chain(self.programs)
    }

    /// The oldest kernel that has every feature this set uses.
    pub fn min_kernel(&self) -> (u32, u32) {
        SHARED_FEATURES
            .iter()
            .chain(self.features)
            .map(|f| f.since)
            .max()
            .unwrap_or((0, 0))
    }

    /// The feature that sets the minimum kernel.
    pub fn min_kernel_reason(&self) -> &'static str {
        SHARED_FEATURES
            .iter()
            .chain(self.features)
            .max_by_key(|f| f.since)
            .map_or("", |f| f.what)
    }

    /// The set's own hooks, `kind/target`, without duplicates.
    pub fn hooks(&self) -> Vec<String> {
        hooks_of(self.programs)
    }
}

/// `kind/target` of each program, first occurrence kept.
pub fn hooks_of(programs: &[Program]) -> Vec<String> {
    let mut hooks: Vec<String> = Vec::new();
    for program in programs {
        let hook = program.hook();
        if !hooks.contains(&hook) {
            hooks.push(hook);
        }
    }
    hooks
}

const fn accept_arity(program: Program, arity: u32) -> Program {
    Program {
        accept_arity: Some(arity),
        ..program
    }
}

use ProgramKind::{Cgroup, Fentry, Fexit, Kprobe, Kretprobe, TpBtf, Tracepoint};

/// State changes, destruction, process ends: every set attaches these.
pub const SHARED: &[Program] = &[
    Program::new(
        "inet_sock_set_state",
        TpBtf,
        "sock:inet_sock_set_state",
        "state changes; connects in the tracepoint set",
    ),
    // The reports forget a socket at its close.
    Program::new(
        "tcp_destroy_sock",
        Tracepoint,
        "tcp:tcp_destroy_sock",
        "destroy (`events` only)",
    )
    .events_only(),
    Program::new(
        "sched_process_free",
        TpBtf,
        "sched:sched_process_free",
        "process end",
    ),
];

/// What every set's programs rely on (the shared ones and `emit.rs`).
pub const SHARED_FEATURES: &[Feature] = &[
    Feature {
        what: "BTF tracepoints (tp_btf)",
        since: (5, 5),
    },
    Feature {
        what: "the BPF ring buffer",
        since: (5, 8),
    },
    Feature {
        what: "bpf_get_socket_cookie on BTF socket pointers in tracing programs",
        since: (5, 12),
    },
    Feature {
        what: "bpf_task_pt_regs (the user stack pointer of open events)",
        since: (5, 15),
    },
];

/// Every set, best first: precise and cheap, then cheap, then portable.
pub const SETS: [SetSpec; 3] = [
    SetSpec {
        set: HookSet::Fentry,
        name: "fentry",
        description: "BPF trampolines on tcp_connect, inet_csk_accept and tcp_close",
        programs: &[
            Program::new("fentry_tcp_connect", Fentry, "tcp_connect", "connect"),
            accept_arity(
                Program::new("fexit_inet_csk_accept", Fexit, "inet_csk_accept", "accept"),
                2,
            ),
            accept_arity(
                Program::new(
                    "fexit_inet_csk_accept_4args",
                    Fexit,
                    "inet_csk_accept",
                    "accept",
                ),
                4,
            ),
            Program::new("fentry_tcp_close", Fentry, "tcp_close", "close"),
        ],
        features: &[Feature {
            what: "BPF trampolines (fentry/fexit) on x86_64",
            since: (5, 5),
        }],
    },
    SetSpec {
        set: HookSet::Kprobe,
        name: "kprobe",
        description: "kprobes on tcp_connect, inet_csk_accept and tcp_close",
        programs: &[
            Program::new("kprobe_tcp_connect", Kprobe, "tcp_connect", "connect"),
            Program::new(
                "kretprobe_inet_csk_accept",
                Kretprobe,
                "inet_csk_accept",
                "accept",
            ),
            Program::new("kprobe_tcp_close", Kprobe, "tcp_close", "close"),
        ],
        features: &[],
    },
    SetSpec {
        set: HookSet::Tracepoint,
        name: "tracepoint",
        description: "stable tracepoints and a cgroup socket hook (no kprobes, no trampolines)",
        programs: &[
            Program::new(
                "sys_exit_accept",
                Tracepoint,
                "syscalls:sys_exit_accept",
                "accept",
            ),
            Program::new(
                "sys_exit_accept",
                Tracepoint,
                "syscalls:sys_exit_accept4",
                "accept",
            ),
            Program::new("sock_release", Cgroup, "sock_release", "close"),
        ],
        features: &[Feature {
            what: "cgroup/sock_release",
            since: (5, 9),
        }],
    },
];

/// The spec of `set`.
pub fn spec(set: HookSet) -> &'static SetSpec {
    SETS.iter()
        .find(|spec| spec.set == set)
        .expect("every HookSet has a row in SETS")
}

#[cfg(test)]
mod tests {
    use super::*;

    static README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

    /// The cells of the README's hook set table row whose first cell is `first`.
    fn readme_row(first: &str) -> Vec<&'static str> {
        let section = README
            .split_once("## Hook sets and kernels")
            .expect("README has a \"Hook sets and kernels\" section")
            .1;
        section
            .lines()
            .map(|line| line.trim().trim_matches('|').split('|').map(str::trim))
            .map(Iterator::collect::<Vec<_>>)
            .find(|cells| cells.first() == Some(&first))
            .unwrap_or_else(|| panic!("README hook set table has no row {first}"))
    }

    /// Backquoted words of a table cell.
    fn quoted(cell: &str) -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn readme_table_lists_each_sets_programs_and_minimum_kernel() {
        for spec in &SETS {
            let row = readme_row(&format!("`{}`", spec.name));
            assert_eq!(quoted(row[1]), spec.hooks(), "programs of {}", spec.name);
            let (major, minor) = spec.min_kernel();
            assert_eq!(
                row[3].split_whitespace().next(),
                Some(format!("{major}.{minor}").as_str()),
                "minimum kernel of {}",
                spec.name
            );
        }
        let shared = readme_row("every set");
        assert_eq!(quoted(shared[1]), hooks_of(SHARED));
    }

    #[test]
    fn minimum_kernels_are_the_newest_feature_each_set_uses() {
        for spec in &SETS {
            assert_eq!(spec.min_kernel(), (5, 15), "{}", spec.name);
            assert!(spec.min_kernel_reason().starts_with("bpf_task_pt_regs"));
        }
    }

    #[test]
    fn one_fexit_program_per_accept_signature() {
        let fentry = spec(HookSet::Fentry);
        let arities: Vec<_> = fentry
            .programs
            .iter()
            .filter_map(|p| p.accept_arity)
            .collect();
        assert_eq!(arities, [2, 4]);
        assert_eq!(
            fentry.hooks(),
            [
                "fentry/tcp_connect",
                "fexit/inet_csk_accept",
                "fentry/tcp_close"
            ]
        );
    }
}
