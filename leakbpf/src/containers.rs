//! Which container and pod a process runs in, from its cgroup v2 path.
//! Runtimes name the leaf cgroup after the container id (docker:
//! `docker-<id>.scope` or `/docker/<id>`; containerd: `cri-containerd-<id>.scope`;
//! CRI-O: `crio-<id>.scope`), and the kubelet names the pod's cgroup after
//! its UID (`kubepods-besteffort-pod<uid>.slice`, with `_` for `-` under the
//! systemd driver, or `/kubepods/besteffort/pod<uid>/` under cgroupfs).
use crate::report::model::Report;

/// What a cgroup path says about where a process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub cgroup: String,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// The cgroup v2 path of `pid` (`0::/path` in `/proc/PID/cgroup`).
pub fn cgroup_path(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

pub fn of_pid(pid: u32) -> Option<Placement> {
    cgroup_path(pid).map(|path| placement(&path))
}

/// Reads the container and pod out of a cgroup path.
pub fn placement(path: &str) -> Placement {
    let mut found = Placement {
        cgroup: path.to_owned(),
        ..Placement::default()
    };
    for part in path.split('/') {
        let name = part.strip_suffix(".scope").unwrap_or(part);
        // The id is the last 64-hex-digit run of the component, whatever
        // the runtime's prefix (docker-, cri-containerd-, crio-, none).
        let tail = name.rsplit(['-', ':']).next().unwrap_or(name);
        if tail.len() == 64 && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
            found.container_id = Some(tail.to_ascii_lowercase());
        }
        if let Some(uid) = pod_uid(part) {
            found.pod_uid = Some(uid);
        }
    }
    found
}

fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let at = name.rfind("pod")?;
    let uid = name[at + 3..].replace('_', "-");
    let is_uid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    is_uid.then_some(uid)
}

/// Fills in every process's cgroup, container and pod, where readable.
pub fn annotate(report: &mut Report) {
    for process in &mut report.processes {
        if let Some(found) = of_pid(process.pid) {
            process.cgroup = Some(found.cgroup);
            process.container_id = found.container_id;
            process.pod_uid = found.pod_uid;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    #[test]
    fn reads_the_container_id_of_every_runtime() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_0000_4111_8222_333344445555.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-burstable.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(placement(&path).container_id.as_deref(), Some(ID), "{path}");
        }
    }

    #[test]
    fn reads_the_pod_uid_under_both_cgroup_drivers() {
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_0000_4111_8222_333344445555.slice/cri-containerd-{ID}.scope"
        );
        let cgroupfs = format!("/kubepods/burstable/pod1b2c3d4e-0000-4111-8222-333344445555/{ID}");
        for path in [systemd, cgroupfs] {
            let found = placement(&path);
            assert_eq!(
                found.pod_uid.as_deref(),
                Some("1b2c3d4e-0000-4111-8222-333344445555"),
                "{path}"
            );
            assert_eq!(found.container_id.as_deref(), Some(ID));
        }
    }

    #[test]
    fn a_host_service_has_neither() {
        let found = placement("/system.slice/ssh.service");
        assert_eq!(found.cgroup, "/system.slice/ssh.service");
        assert_eq!((found.container_id, found.pod_uid), (None, None));
        assert_eq!(placement("/").container_id, None);
    }
}
