//! `leakbpf agent --config FILE`: the agent's settings in TOML, the same
//! names as the flags (`top_k` for `--top-k`). A flag given on the command
//! line wins over the file; an unknown key is an error, not ignored.
use std::{net::SocketAddr, path::Path, time::Duration};

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
}
