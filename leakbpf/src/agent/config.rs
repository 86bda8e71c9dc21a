//! `leakbpf agent --config FILE`: the agent's settings in TOML, the same
//! names as the flags (`top_k` for `--top-k`). A flag given on the command
//! line wins over the file; an unknown key is an error, not ignored.
use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::cli::parse_duration;

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub interval: Option<String>,
    pub window: Option<usize>,
    pub top_k: Option<usize>,
    pub idle: Option<String>,
    pub max_sockets: Option<usize>,
    /// Constant labels added to every series of /metrics (`--metric-label`).
    pub metric_labels: Option<BTreeMap<String, String>>,
}

/// The settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub interval: Duration,
    pub window: usize,
    pub top_k: usize,
    pub idle: Duration,
    pub max_sockets: usize,
    /// Constant labels on every exposed series, checked by [`check_metric_label`].
    pub metric_labels: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            interval: Duration::from_secs(10),
            window: 6,
            top_k: 50,
            idle: Duration::from_secs(60),
            max_sockets: 1 << 20,
            metric_labels: BTreeMap::new(),
        }
    }
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        ConfigFile::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ConfigFile> {
        toml::from_str(text).map_err(|err| anyhow::anyhow!("{}", err.message()))
    }

    /// Lays `self` over the defaults.
    pub fn settings(&self) -> Result<Settings> {
        let mut s = Settings::default();
        if let Some(listen) = &self.listen {
            s.listen = listen.parse().with_context(|| {
                format!("listen: {listen:?} is not an address like 127.0.0.1:9464")
            })?;
        }
        let duration = |key: &str, text: &str| {
            parse_duration(text).map_err(|err| anyhow::anyhow!("{key}: {err}"))
        };
        if let Some(text) = &self.interval {
            s.interval = duration("interval", text)?;
        }
        if let Some(text) = &self.idle {
            s.idle = duration("idle", text)?;
        }
        if let Some(window) = self.window {
            s.window = check_window(window).map_err(anyhow::Error::msg)?;
        }
        if let Some(k) = self.top_k {
            if k == 0 {
                bail!("top_k: must be at least 1");
            }
            s.top_k = k;
        }
        if let Some(n) = self.max_sockets {
            s.max_sockets = check_max_sockets(n).map_err(anyhow::Error::msg)?;
        }
        for (key, value) in self.metric_labels.iter().flatten() {
            check_label_name(key).map_err(|err| anyhow::anyhow!("metric_labels: {err}"))?;
            s.metric_labels.insert(key.clone(), value.clone());
        }
        Ok(s)
    }
}

pub fn check_window(n: usize) -> Result<usize, String> {
    if (2..=1000).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "the growing window takes 2 to 1000 intervals, not {n}"
        ))
    }
}

pub fn check_max_sockets(n: usize) -> Result<usize, String> {
    if (1000..=1 << 26).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "tracked sockets can be capped from 1000 to {}, not {n}",
            1 << 26
        ))
    }
}

/// The labels the agent's own series carry: a constant label of the same
/// name would make a series with the label twice, which Prometheus rejects.
const OWN_LABELS: [&str; 10] = [
    "pid",
    "comm",
    "container",
    "direction",
    "state",
    "class",
    "kind",
    "cause",
    "what",
    "fix",
];

/// A constant label's name: a Prometheus label name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`), not reserved (`__` prefix) and not one of the
/// agent's own labels.
pub fn check_label_name(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{key:?} is not a Prometheus label name (letters, digits and _, not starting with a digit)"
        ));
    }
    if key.starts_with("__") {
        return Err(format!(
            "{key:?}: label names starting with __ are reserved to Prometheus"
        ));
    }
    if OWN_LABELS.contains(&key) {
        return Err(format!(
            "{key:?} is a label of leakbpf's own series (pid, comm, container, direction, state, class, kind, cause, what, fix)"
        ));
    }
    Ok(())
}

/// `KEY=VALUE` of `--metric-label`.
pub fn parse_metric_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    check_label_name(key)?;
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_and_refuses_unknown_keys() {
        let file = ConfigFile::parse(
            "listen = \"0.0.0.0:9500\"\ninterval = \"30s\"\nwindow = 4\ntop_k = 10\nidle = \"5m\"\n",
        )
        .unwrap();
        let s = file.settings().unwrap();
        assert_eq!(s.listen, "0.0.0.0:9500".parse().unwrap());
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!((s.window, s.top_k), (4, 10));
        assert_eq!(s.idle, Duration::from_secs(300));
        assert_eq!(s.max_sockets, Settings::default().max_sockets);
        let err = ConfigFile::parse("intervall = \"30s\"\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `intervall`"),
            "{err}"
        );
        let err = ConfigFile::parse("window = 1\n")
            .unwrap()
            .settings()
            .unwrap_err();
        assert!(err.to_string().contains("2 to 1000"), "{err}");
        let err = ConfigFile::parse("listen = \"nowhere\"\n")
            .unwrap()
            .settings()
            .unwrap_err();
        assert!(err.to_string().starts_with("listen:"), "{err}");
    }

    #[test]
    fn reads_metric_labels_and_checks_their_names() {
        let s = ConfigFile::parse("[metric_labels]\nnode = \"n1\"\ncluster = \"prod\"\n")
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!(
            s.metric_labels.into_iter().collect::<Vec<_>>(),
            [
                ("cluster".to_owned(), "prod".to_owned()),
                ("node".to_owned(), "n1".to_owned())
            ]
        );
        let err = ConfigFile::parse("[metric_labels]\n\"1node\" = \"n1\"\n")
            .unwrap()
            .settings()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metric_labels: \"1node\" is not a Prometheus label name (letters, digits and _, not starting with a digit)"
        );
        assert_eq!(
            parse_metric_label("node=worker-1=a"),
            Ok(("node".to_owned(), "worker-1=a".to_owned()))
        );
        assert_eq!(
            parse_metric_label("pod_name="),
            Ok(("pod_name".to_owned(), String::new()))
        );
        assert_eq!(
            parse_metric_label("node"),
            Err("\"node\" is not KEY=VALUE".to_owned())
        );
        for bad in ["no-de=x", "=x", "nöde=x", "a b=x"] {
            let err = parse_metric_label(bad).unwrap_err();
            assert!(
                err.contains("is not a Prometheus label name"),
                "{bad}: {err}"
            );
        }
        assert!(
            parse_metric_label("__name__=x")
                .unwrap_err()
                .contains("reserved")
        );
        assert!(
            parse_metric_label("pid=1")
                .unwrap_err()
                .contains("leakbpf's own series")
        );
    }
}
