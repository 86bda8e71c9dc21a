//! The capabilities a tracing command needs, checked at start-up against
//! the effective set (`CapEff` in /proc/self/status) instead of euid 0, so
//! leakbpf runs as an unprivileged user with exactly these (systemd's
//! `AmbientCapabilities=`, a container's `--cap-add`). A missing one gets one
//! line naming it and what it is for.
use anyhow::{Result, bail};

/// A capability leakbpf may need, with why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub number: u32,
    pub why: &'static str,
}

/// What every tracing command (`events`, `trace`, the agent) needs.
pub const TRACING: [Capability; 5] = [
    Capability {
        name: "CAP_BPF",
        number: 39,
        why: "load the eBPF programs and create their maps",
    },
    Capability {
        name: "CAP_PERFMON",
        number: 38,
        why: "attach tracing programs and read stack traces",
    },
    Capability {
        name: "CAP_NET_ADMIN",
        number: 12,
        why: "attach the cgroup socket hook",
    },
    Capability {
        name: "CAP_SYS_PTRACE",
        number: 19,
        why: "read other processes' fd tables, memory maps and binaries",
    },
    Capability {
        name: "CAP_DAC_READ_SEARCH",
        number: 2,
        why: "read tracefs (mode 0700) and other processes' /proc entries",
    },
];

/// `CAP_SYS_ADMIN`, needed only to mount tracefs where nothing mounted it.
pub const MOUNT: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    number: 21,
    why: "mount tracefs on /sys/kernel/tracing (nothing has mounted it)",
};

/// The effective capability set of this process.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether `cap` is in the effective set `eff`.
pub fn has(eff: u64, cap: Capability) -> bool {
    cap.number < 64 && eff & (1 << cap.number) != 0
}

/// `CAP_CHECKPOINT_RESTORE` (Linux 5.9): the symbolizer opens other
/// processes' binaries through `/proc/PID/map_files`, which takes it (or
/// CAP_SYS_ADMIN). Not required: without it stacks stay raw addresses.
pub const SYMBOLS: Capability = Capability {
    name: "CAP_CHECKPOINT_RESTORE",
    number: 40,
    why: "symbolize other processes' stacks through /proc/PID/map_files",
};

/// A warning when `eff` can trace but not name the frames of other
/// processes' stacks.
pub fn symbols_warning(eff: u64) -> Option<String> {
    (!has(eff, SYMBOLS) && !has(eff, MOUNT)).then(|| {
        format!(
            "missing {} ({}): user stacks will be unsymbolized addresses",
            SYMBOLS.name, SYMBOLS.why
        )
    })
}

/// Fails, in one line, on the first of `needed` missing from `eff`.
pub fn require(eff: u64, needed: &[Capability]) -> Result<()> {
    if let Some(missing) = needed.iter().find(|cap| !has(eff, **cap)) {
        let all: Vec<&str> = needed.iter().map(|cap| cap.name).collect();
        bail!(
            "missing {} ({}); run as root or grant: {}",
            missing.name,
            missing.why,
            all.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001c000081004\n";
        let eff = parse_cap_eff(status).unwrap();
        for cap in TRACING {
            assert!(has(eff, cap), "{}", cap.name);
        }
        assert!(!has(eff, MOUNT));
    }

    #[test]
    fn stacks_need_checkpoint_restore_or_sys_admin() {
        let five: u64 = (1 << 39) | (1 << 38) | (1 << 12) | (1 << 19) | (1 << 2);
        let warning = symbols_warning(five).expect("a warning with the five only");
        assert!(
            warning.starts_with("missing CAP_CHECKPOINT_RESTORE"),
            "{warning}"
        );
        assert_eq!(symbols_warning(five | (1 << 40)), None);
        assert_eq!(symbols_warning(five | (1 << 21)), None);
        assert_eq!(symbols_warning(u64::MAX), None);
    }

    #[test]
    fn a_missing_capability_is_named_with_its_use() {
        let eff = (1 << 39) | (1 << 12) | (1 << 19) | (1 << 2);
        let err = require(eff, &TRACING).unwrap_err().to_string();
        assert_eq!(
            err,
            "missing CAP_PERFMON (attach tracing programs and read stack traces); run as root \
             or grant: CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"
        );
        assert!(require(u64::MAX, &TRACING).is_ok());
    }
}
