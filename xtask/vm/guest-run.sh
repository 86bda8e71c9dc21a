#!/bin/bash
# Runs inside the virtme-ng guest that xtask/src/vm.rs boots (it embeds this
# file with include_str! and writes a copy next to the command file).
#
#   guest-run.sh COMMAND_FILE
#
# Prepares what leakbpf's tests expect of a real host, then runs COMMAND_FILE
# with bash as root and exits with its status. Every line this script itself
# prints goes to stderr and starts with "leakbpf-vm:"; the first one,
# "leakbpf-vm: ready uptime=SECONDS", tells the host how long the boot took.
set -u

say() { printf 'leakbpf-vm: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 125; }

[ $# -eq 1 ] || die "usage: guest-run.sh COMMAND_FILE"
[ -r "$1" ] || die "command file $1 is not readable in the guest"

read -r uptime _ </proc/uptime
say "ready uptime=$uptime kernel=$(uname -r)"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}

fstype() { stat -f -c %T "$1" 2>/dev/null; }

# tracefs (virtme-ng's init mounts it; older inits did not).
if [ "$(fstype /sys/kernel/tracing)" != tracefs ]; then
  mount -t tracefs tracefs /sys/kernel/tracing || die "cannot mount tracefs on /sys/kernel/tracing"
fi
# debugfs: bpftrace and some tools still look for tracing under it.
if [ "$(fstype /sys/kernel/debug)" != debugfs ]; then
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || say "warning: debugfs not mounted"
fi
# bpffs, for pinning.
if [ "$(fstype /sys/fs/bpf)" != bpf_fs ]; then
  mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs on /sys/fs/bpf"
fi
# cgroup2: at /sys/fs/cgroup (virtme-ng's default), else in a subdirectory of
# whatever hierarchy is mounted there.
if [ "$(fstype /sys/fs/cgroup)" != cgroup2fs ] \
   && [ "$(fstype /sys/fs/cgroup/unified)" != cgroup2fs ]; then
  if [ "$(fstype /sys/fs/cgroup)" = tmpfs ]; then
    mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified \
      || die "cannot mount cgroup2 on /sys/fs/cgroup/unified"
  else
    mount -t cgroup2 none /sys/fs/cgroup || die "cannot mount cgroup2 on /sys/fs/cgroup"
  fi
fi
[ -r /sys/kernel/btf/vmlinux ] || say "warning: this kernel has no /sys/kernel/btf/vmlinux"

# Loopback (virtme-ng brings it up; make sure).
ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null || die "cannot bring up the loopback interface"

# Hold the static keys of the tracepoints leakbpf attaches to on for the
# whole run (ftrace events enabled, recording off). Without a standing user,
# every leakbpf start and stop patches the tracepoint's jump label with
# text_poke_bp(); under qemu's software CPUs (TCG) a vCPU once hit that int3
# after the patch had finished: "Fatal exception in interrupt" with RIP at
# delayed_put_task_struct+0x26, the second byte of sched_process_free's
# 2-byte jump label, in an RCU callback (Debian 6.12.117, 2026-12-02 CI).
# A BPF program that faults is reported inside bpf_prog_*, not at a jump
# label; real CPUs serialize that patching. Kprobes and trampolines still
# patch text per attach: they are what the kprobe and fentry cells test.
tr=/sys/kernel/tracing
echo 0 >"$tr/tracing_on" 2>/dev/null || say "warning: cannot turn ftrace recording off"
for event in sched/sched_process_free sched/sched_process_exec sock/inet_sock_set_state tcp/tcp_destroy_sock; do
  if [ -e "$tr/events/$event/enable" ]; then
    echo 1 >"$tr/events/$event/enable" 2>/dev/null || say "warning: cannot hold $event on"
  fi
done

# Tests open many sockets; the guest starts with the host's defaults.
ulimit -n 65536 2>/dev/null || true

/bin/bash "$1"
status=$?
say "exit status=$status"
exit "$status"
