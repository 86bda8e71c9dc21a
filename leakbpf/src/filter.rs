//! Which sockets a command shows, decided on the socket's owner and family.
use crate::event::{Family, Task};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pids: Vec<u32>,
    comm: Option<String>,
    family: Option<Family>,
}

impl Filter {
    /// Sockets of these processes (any if empty), with this exact command
    /// name, of this family.
    pub fn new(pids: Vec<u32>, comm: Option<String>, family: Option<Family>) -> Self {
        Filter { pids, comm, family }
    }

    /// Only these processes.
    pub fn pids_only(pids: Vec<u32>) -> Self {
        Filter::new(pids, None, None)
    }

    /// The `--pid` list, if any: scans of /proc need only walk these.
    pub fn pids(&self) -> Option<Vec<u32>> {
        (!self.pids.is_empty()).then(|| self.pids.clone())
    }

    pub fn matches(&self, owner: &Task, family: Family) -> bool {
        (self.pids.is_empty() || self.pids.contains(&owner.pid))
            && self
                .comm
                .as_ref()
                .is_none_or(|comm| comm == owner.comm.as_str())
            && self.family.is_none_or(|f| f == family)
    }

    /// Fails on a `--pid` that names no running process, a thread (sockets
    /// belong to processes: the filter would never match) or a kernel
    /// thread (it holds no sockets).
    pub fn check_pids_exist(&self) -> anyhow::Result<()> {
        for &pid in &self.pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
            let (Ok(status), false) = (status, pid == 0) else {
                anyhow::bail!("no process with pid {pid}");
            };
            let tgid = status
                .lines()
                .find_map(|line| line.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            if let Some(tgid) = tgid
                && tgid != pid
            {
                anyhow::bail!("pid {pid} is a thread of process {tgid}: pass --pid {tgid}");
            }
            if is_kernel_thread(pid) {
                anyhow::bail!("pid {pid} is a kernel thread: it holds no sockets");
            }
        }
        Ok(())
    }
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat` (field 9).
fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_comm = &stat[stat.rfind(')')? + 1..];
            after_comm.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(pid: u32, comm: &str) -> Task {
        Task {
            pid,
            tid: pid,
            cgroup_id: 0,
            comm: comm.into(),
            start_ns: 0,
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().matches(&task(1, "a"), Family::Ipv6));
    }

    #[test]
    fn all_conditions_must_hold() {
        let filter = Filter::new(vec![7, 8], Some("curl".to_owned()), Some(Family::Ipv4));
        assert!(filter.matches(&task(7, "curl"), Family::Ipv4));
        assert!(!filter.matches(&task(9, "curl"), Family::Ipv4));
        assert!(!filter.matches(&task(8, "wget"), Family::Ipv4));
        assert!(!filter.matches(&task(8, "curl"), Family::Ipv6));
    }

    #[test]
    fn rejects_pids_that_do_not_exist() {
        let filter = Filter::pids_only(vec![std::process::id(), u32::MAX - 1]);
        let err = filter.check_pids_exist().unwrap_err().to_string();
        assert_eq!(err, format!("no process with pid {}", u32::MAX - 1));
    }
}
