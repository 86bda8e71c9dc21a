//! Where the root of the cgroup v2 hierarchy is, as this process can open
//! it: `cgroup/sock_release` sees only the sockets of processes in the
//! cgroup it is attached to and below, so it must be the root.
//!
//! Inside a cgroup namespace (a container) the cgroup2 mount shows that
//! namespace's root, not the hierarchy's: attached there, the hook would
//! miss every release on the rest of the host and leave phantom open
//! sockets. The true root is recognised by its inode (kernfs gives the
//! hierarchy's root inode 1), and found through this process's mounts, an
//! explicit `--cgroup-root`, or pid 1's mounts through `/proc/1/root`
//! (a container with the host's pid namespace).
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// What was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupRoot {
    /// The hierarchy's root, opened at this path.
    Root(PathBuf),
    /// A cgroup2 mount that is not the hierarchy's root (a cgroup
    /// namespace's own root, or a subtree), and no way to the real one.
    NotRoot(PathBuf),
    /// No cgroup2 mount at all.
    Missing,
}

impl CgroupRoot {
    /// How `leakbpf check` and error messages say it.
    pub fn describe(&self) -> String {
        match self {
            CgroupRoot::Root(path) => format!("{} (the hierarchy's root)", path.display()),
            CgroupRoot::NotRoot(path) => format!(
                "{} is not the hierarchy's root (a cgroup namespace?)",
                path.display()
            ),
            CgroupRoot::Missing => "not mounted".to_owned(),
        }
    }

    /// What the tracepoint set lacks, if anything, as a phrase naming the fix.
    pub fn missing(&self, hook: &str) -> Option<String> {
        match self {
            CgroupRoot::Root(_) => None,
            CgroupRoot::Missing => Some(format!("a cgroup v2 mount (for {hook})")),
            CgroupRoot::NotRoot(path) => Some(format!(
                "the root of the cgroup v2 hierarchy for {hook}, but {} is only the root of this \
                 cgroup namespace: run leakbpf in the host's cgroup namespace, give it the host's \
                 pid namespace (it then uses /proc/1/root), or pass --cgroup-root with the host's \
                 cgroup2 mount",
                path.display()
            )),
        }
    }
}

/// Finds the root: `explicit` if given (it must be the root), else this
/// process's cgroup2 mounts, else pid 1's.
pub fn find(explicit: Option<&Path>) -> CgroupRoot {
    if let Some(path) = explicit {
        return if is_root(path) {
            CgroupRoot::Root(path.to_path_buf())
        } else {
            CgroupRoot::NotRoot(path.to_path_buf())
        };
    }
    let own = fs::read_to_string("/proc/self/mountinfo")
        .map(|text| cgroup2_mounts(&text))
        .unwrap_or_default();
    if let Some(root) = own.iter().find(|path| is_root(path)) {
        return CgroupRoot::Root(root.clone());
    }
    let through_pid1 = fs::read_to_string("/proc/1/mountinfo")
        .map(|text| cgroup2_mounts(&text))
        .unwrap_or_default()
        .into_iter()
        .map(|mount| Path::new("/proc/1/root").join(mount.strip_prefix("/").unwrap_or(&mount)));
    for path in through_pid1 {
        if is_root(&path) {
            return CgroupRoot::Root(path);
        }
    }
    match own.into_iter().next() {
        Some(path) => CgroupRoot::NotRoot(path),
        None => CgroupRoot::Missing,
    }
}

/// Whether `path` is the root directory of the cgroup v2 hierarchy.
pub fn is_root(path: &Path) -> bool {
    let Ok(metadata) = fs::metadata(path) else {
        return false;
    };
    metadata.is_dir() && metadata.ino() == 1 && is_cgroup2(path)
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes only into `stat`, which is zeroed and ours.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) };
    // `f_type` is a signed word whose width varies by architecture.
    rc == 0 && u64::try_from(stat.f_type).ok() == Some(CGROUP2_SUPER_MAGIC)
}

/// Mount points of the cgroup2 mounts in mountinfo text, in order; the
/// last mount on a path is the one a lookup of that path reaches, so a
/// path mounted over (or below a later mount) appears only for its top mount.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // "... mount_point ... - fstype source options"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point);
        // A mount hides whatever was mounted at or below its mount point.
        mounts.retain(|m| !m.starts_with(&mount_point));
        if right.split_whitespace().next() == Some("cgroup2") {
            mounts.push(mount_point);
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_cgroup2_mounts_as_a_lookup_sees_them() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 41 0:38 /leakbpf /sys/fs/cgroup/unified rw,relatime - cgroup2 none rw
91 23 0:38 / /host/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
92 23 0:50 / /host/cgroup rw - tmpfs tmpfs rw
";
        assert_eq!(
            cgroup2_mounts(mountinfo),
            [PathBuf::from("/sys/fs/cgroup/unified")],
            "one entry for the path mounted over; a mount under a later tmpfs is gone"
        );
    }

    #[test]
    fn a_plain_directory_is_not_the_root() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_root(dir.path()));
        assert_eq!(
            find(Some(dir.path())),
            CgroupRoot::NotRoot(dir.path().to_path_buf())
        );
        let message = CgroupRoot::NotRoot("/sys/fs/cgroup".into())
            .missing("cgroup/sock_release")
            .unwrap();
        assert!(message.contains("--cgroup-root"), "{message}");
        assert_eq!(
            CgroupRoot::Root("/x".into()).missing("cgroup/sock_release"),
            None
        );
    }
}
