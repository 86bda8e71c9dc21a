//! What a verifier refusal means, in one line.
//!
//! Why: a kernel that lacks a BPF helper for a program type (Linux 5.10 has
//! no `bpf_get_socket_cookie` for tracing programs) refuses the program at
//! load time with a verifier log hundreds of lines long, whose one telling
//! line is `unknown func NAME#ID`. A user needs that name and the kernel
//! that brought it, not the log.
use std::fmt;

/// A helper the verifier did not offer to one of leakbpf's programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingHelper {
    /// `bpf_get_socket_cookie`.
    pub helper: String,
    /// The program being loaded, as the load error's context names it
    /// (`tp_btf/inet_sock_set_state`).
    pub program: Option<String>,
}

/// Helpers leakbpf's programs call that older kernels lack for tracing
/// programs, with the release that brought them there.
const SINCE: [(&str, &str); 3] = [
    ("bpf_get_socket_cookie", "5.12"),
    ("bpf_get_current_task_btf", "5.11"),
    ("bpf_task_pt_regs", "5.15"),
];

impl MissingHelper {
    /// Finds the missing helper in a load error's chain (its verifier log).
    pub fn in_error(err: &anyhow::Error) -> Option<Self> {
        let helper = err
            .chain()
            .find_map(|cause| unknown_helper(&cause.to_string()))?;
        let program = err.chain().find_map(|cause| {
            cause
                .to_string()
                .strip_prefix("loading ")
                .map(|p| p.split(':').next().unwrap_or(p).to_owned())
        });
        Some(MissingHelper { helper, program })
    }
}

impl fmt::Display for MissingHelper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the BPF helper {}", self.helper)?;
        if let Some(program) = &self.program {
            write!(f, " in {program}")?;
        }
        match SINCE.iter().find(|(name, _)| *name == self.helper) {
            Some((_, since)) => write!(f, " (Linux {since}+)"),
            None => Ok(()),
        }?;
        write!(f, ", which this kernel's verifier does not offer there")
    }
}

/// `unknown func bpf_get_socket_cookie#46` anywhere in `log` ->
/// `bpf_get_socket_cookie`.
fn unknown_helper(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let name = line.trim().strip_prefix("unknown func ")?;
        let name = name.split('#').next()?.trim();
        (!name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    /// The tail of what Debian 11's 5.10.0-46 said about
    /// tp_btf/inet_sock_set_state, as aya wraps it.
    const LOG_5_10: &str = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). \
        Verifier output: arg#0 type is not a struct\nUnrecognized arg#0 type PTR\n\
        62: (85) call bpf_get_socket_cookie#46\nunknown func bpf_get_socket_cookie#46\n\
        processed 83 insns (limit 1000000) max_states_per_insn 1 total_states 5\n";

    #[test]
    fn names_the_helper_and_the_program() {
        let err = Err::<(), _>(anyhow::anyhow!(LOG_5_10))
            .context("loading tp_btf/inet_sock_set_state")
            .context("attaching the kprobe hook set")
            .unwrap_err();
        let missing = MissingHelper::in_error(&err).unwrap();
        assert_eq!(
            missing,
            MissingHelper {
                helper: "bpf_get_socket_cookie".to_owned(),
                program: Some("tp_btf/inet_sock_set_state".to_owned()),
            }
        );
        assert_eq!(
            missing.to_string(),
            "the BPF helper bpf_get_socket_cookie in tp_btf/inet_sock_set_state (Linux 5.12+), \
             which this kernel's verifier does not offer there"
        );
    }

    #[test]
    fn other_refusals_are_not_a_missing_helper() {
        let err = anyhow::anyhow!("Verifier output: R1 invalid mem access 'scalar'\n")
            .context("loading fentry/tcp_close");
        assert_eq!(MissingHelper::in_error(&err), None);
        assert_eq!(unknown_helper("unknown func #12"), None);
        assert_eq!(
            unknown_helper("x\nunknown func bpf_task_pt_regs#175\n").as_deref(),
            Some("bpf_task_pt_regs")
        );
    }
}
