//! When a leaking process runs out: its fd limit and open fds
//! (`/proc/PID/limits`, `/proc/PID/fd`), its memory cgroup's usage and
//! tightest `memory.max` with the socket buffers charged to it
//! (`memory.stat` `sock`), and a linear forecast at the window's rate.
use std::path::{Path, PathBuf};

/// Seconds until `used` reaches `limit` at `rate_per_s` (`None` when it is
/// not rising, or there is no limit).
pub fn seconds_to(limit: Option<u64>, used: Option<u64>, rate_per_s: f64) -> Option<f64> {
    let (limit, used) = (limit?, used?);
    // Not rising (or NaN): no forecast.
    if rate_per_s.is_nan() || rate_per_s <= 0.0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    Some((limit.saturating_sub(used) as f64 / rate_per_s).max(0.0))
}

/// The soft "Max open files" of `/proc/PID/limits` (`None`: unlimited).
pub fn parse_fd_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn fd_limit(pid: u32) -> Option<u64> {
    parse_fd_limit(&std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

pub fn open_fds(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

/// A memory cgroup's usage now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub current: u64,
    /// The tightest `memory.max` from the cgroup up to the root.
    pub limit: Option<u64>,
    pub sockets: Option<u64>,
}

/// Reads the memory cgroup at `path` (a cgroup v2 path) under `root`
/// (the cgroup2 mount).
pub fn memory(root: &Path, path: &str) -> Option<Memory> {
    let dir = root.join(path.trim_start_matches('/'));
    let current = read_u64(&dir.join("memory.current"))?;
    let sockets = std::fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("sock "))
                .and_then(|v| v.trim().parse().ok())
        });
    let mut limit: Option<u64> = None;
    let mut at: Option<PathBuf> = Some(dir);
    while let Some(dir) = at {
        if !dir.starts_with(root) {
            break;
        }
        if let Some(max) = read_u64(&dir.join("memory.max")) {
            limit = Some(limit.map_or(max, |l| l.min(max)));
        }
        at = dir.parent().map(Path::to_path_buf);
    }
    Some(Memory {
        current,
        limit,
        sockets,
    })
}

/// A number file; `max` (no limit) and absent files are `None`.
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// "12 sockets/min", "3 sockets/h": the rate as a person says it.
pub fn rate_text(per_hour: f64) -> String {
    if per_hour >= 120.0 {
        format!("{:.0} sockets/min", per_hour / 60.0)
    } else {
        format!("{per_hour:.0} sockets/h")
    }
}

/// "about 1h20m", "about 45s".
pub fn about(seconds: f64) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a forecast in whole seconds"
    )]
    let s = seconds.max(0.0).round() as u64;
    let text = match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, secs) => format!("{secs}s"),
        (0, min, secs) => format!("{min}m{secs:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    };
    format!("about {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecasts_linearly_and_only_when_rising() {
        assert_eq!(seconds_to(Some(1024), Some(64), 0.2), Some(4800.0));
        assert_eq!(seconds_to(Some(1024), Some(2000), 1.0), Some(0.0));
        assert_eq!(seconds_to(Some(1024), Some(64), 0.0), None);
        assert_eq!(seconds_to(Some(1024), Some(64), -1.0), None);
        assert_eq!(seconds_to(None, Some(64), 1.0), None);
    }

    #[test]
    fn reads_the_soft_fd_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_fd_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_fd_limit(unlimited), None);
    }

    #[test]
    fn reads_the_tightest_memory_limit_up_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let leaf = root.path().join("pod/app");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.path().join("pod/memory.max"), "1000000\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.current"), "250000\n").unwrap();
        std::fs::write(leaf.join("memory.stat"), "anon 1\nsock 4096\nfile 2\n").unwrap();
        let found = memory(root.path(), "/pod/app").unwrap();
        assert_eq!(
            found,
            Memory {
                current: 250_000,
                limit: Some(1_000_000),
                sockets: Some(4096),
            }
        );
    }

    #[test]
    fn says_rates_and_times_as_people_do() {
        assert_eq!(rate_text(720.0), "12 sockets/min");
        assert_eq!(rate_text(30.0), "30 sockets/h");
        assert_eq!(about(4800.0), "about 1h20m");
        assert_eq!(about(95.0), "about 1m35s");
        assert_eq!(about(7.4), "about 7s");
    }
}
