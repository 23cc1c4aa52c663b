//! What the sandbox will use, from what the kernel and privileges give
//! ([`Capabilities`]) and what the operator asked for ([`Mode`]): a pure
//! function, so every combination is a unit test.

use super::cgroup::Via;

/// `--sandbox`: how much confinement users' processes need before warren
/// runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Landlock, a uid per user, cgroups with memory and pids limits, and
    /// rlimits; without any of them no user process starts.
    Required,
    /// Whatever of those exists, each missing one logged as a warning.
    BestEffort,
    /// No Landlock, cgroups or uid switching (a clean environment, a new
    /// session and rlimits still apply).
    Off,
}

impl Mode {
    /// The default: `required` as root, `best-effort` otherwise (an
    /// unprivileged warren cannot switch uids, so `required` would refuse
    /// every process).
    pub fn default_for(root: bool) -> Mode {
        if root {
            Mode::Required
        } else {
            Mode::BestEffort
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Required => "required",
            Mode::BestEffort => "best-effort",
            Mode::Off => "off",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "required" => Ok(Mode::Required),
            "best-effort" => Ok(Mode::BestEffort),
            "off" => Ok(Mode::Off),
            other => Err(format!(
                "{other:?} is not `required`, `best-effort` or `off`"
            )),
        }
    }
}

/// `--sandbox-network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network, as warren has it.
    #[default]
    Host,
    /// A network namespace of its own with only loopback.
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(format!("{other:?} is not `host` or `none`")),
        }
    }
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
        }
    }
}

/// What this kernel and these privileges give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The Landlock ABI version (`None`: no Landlock).
    pub landlock_abi: Option<u8>,
    /// Running as root: processes can run as the users' own uids.
    pub uid_switch: bool,
    /// A writable cgroup v2 subtree to group (and kill) launches.
    pub cgroup_grouping: bool,
    pub cgroup_memory: Option<Via>,
    pub cgroup_pids: Option<Via>,
    pub cgroup_cpu: Option<Via>,
    /// Network namespaces can be made (root).
    pub netns: bool,
}

/// What the sandbox uses, and whether it may run anything at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `Err`: no user process may start; the text says what is missing.
    pub allowed: Result<(), String>,
    pub landlock: bool,
    pub uid_switch: bool,
    pub cgroups: bool,
    pub netns: bool,
    /// What is weaker than the full sandbox (logged as warnings at start).
    pub warnings: Vec<String>,
}

/// Decides from the capabilities and the operator's choices.
pub fn decide(mode: Mode, caps: &Capabilities, network: Network) -> Decision {
    let mut missing = Vec::new();
    if caps.landlock_abi.is_none() {
        missing.push("Landlock (kernel without it, or not enabled at boot)");
    }
    if !caps.uid_switch {
        missing.push("a uid per user (warren does not run as root)");
    }
    if !caps.cgroup_grouping {
        missing.push(
            "a writable cgroup v2 subtree (a task's processes are killed by process group only)",
        );
    }
    if caps.cgroup_memory.is_none() {
        missing.push("the cgroup memory controller (no per-user memory limit)");
    }
    if caps.cgroup_pids.is_none() {
        missing.push("the cgroup pids controller (no per-user process limit beyond RLIMIT_NPROC)");
    }
    let mut warnings: Vec<String> = Vec::new();
    let wants_netns = network == Network::None;
    if wants_netns && !caps.netns {
        warnings.push(
            "--sandbox-network none without network namespaces (not root): only Landlock (ABI 4) denies TCP"
                .into(),
        );
    }
    if mode == Mode::Off {
        warnings.push(
            "the sandbox is off (--sandbox off): users' processes run with warren's uid, \
             no Landlock and no cgroups; only rlimits, a clean environment and a session"
                .into(),
        );
        return Decision {
            allowed: Ok(()),
            landlock: false,
            uid_switch: false,
            cgroups: false,
            netns: wants_netns && caps.netns,
            warnings,
        };
    }
    let allowed = if mode == Mode::Required {
        let mut refused: Vec<&str> = missing.clone();
        if wants_netns && !caps.netns && caps.landlock_abi.is_none_or(|abi| abi < 4) {
            refused.push("network isolation (--sandbox-network none)");
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the sandbox is required (--sandbox required) but this system lacks: {}",
                refused.join("; ")
            ))
        }
    } else {
        warnings.extend(missing.iter().map(|what| format!("sandbox without {what}")));
        if caps.cgroup_cpu.is_none() {
            warnings.push("sandbox without the cgroup cpu controller (no cpu weight)".into());
        }
        Ok(())
    };
    Decision {
        allowed,
        landlock: caps.landlock_abi.is_some(),
        uid_switch: caps.uid_switch,
        cgroups: caps.cgroup_grouping || caps.cgroup_memory.is_some() || caps.cgroup_pids.is_some(),
        netns: wants_netns && caps.netns,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Capabilities {
        Capabilities {
            landlock_abi: Some(7),
            uid_switch: true,
            cgroup_grouping: true,
            cgroup_memory: Some(Via::V1),
            cgroup_pids: Some(Via::V2),
            cgroup_cpu: Some(Via::V1),
            netns: true,
        }
    }

    fn check(
        mode: Mode,
        caps: Capabilities,
        network: Network,
        allowed: bool,
        warning: Option<&str>,
    ) {
        let decision = decide(mode, &caps, network);
        assert_eq!(decision.allowed.is_ok(), allowed, "{decision:?}");
        match warning {
            Some(text) => assert!(
                decision.warnings.iter().any(|w| w.contains(text))
                    || decision
                        .allowed
                        .as_ref()
                        .err()
                        .is_some_and(|e| e.contains(text)),
                "{text:?} not in {decision:?}"
            ),
            None => assert!(decision.warnings.is_empty(), "{decision:?}"),
        }
    }

    #[test]
    fn the_full_sandbox_is_allowed_in_every_mode() {
        check(Mode::Required, full(), Network::Host, true, None);
        check(Mode::BestEffort, full(), Network::None, true, None);
        check(
            Mode::Off,
            full(),
            Network::Host,
            true,
            Some("sandbox is off"),
        );
        let decision = decide(Mode::Required, &full(), Network::None);
        assert!(decision.landlock && decision.uid_switch && decision.cgroups && decision.netns);
        let off = decide(Mode::Off, &full(), Network::Host);
        assert!(!off.landlock && !off.uid_switch && !off.cgroups);
    }

    #[test]
    fn what_is_missing_refuses_when_required_and_warns_otherwise() {
        let no_landlock = Capabilities {
            landlock_abi: None,
            ..full()
        };
        check(
            Mode::Required,
            no_landlock.clone(),
            Network::Host,
            false,
            Some("Landlock"),
        );
        check(
            Mode::BestEffort,
            no_landlock.clone(),
            Network::Host,
            true,
            Some("Landlock"),
        );
        assert!(!decide(Mode::BestEffort, &no_landlock, Network::Host).landlock);
        let not_root = Capabilities {
            uid_switch: false,
            netns: false,
            ..full()
        };
        check(
            Mode::Required,
            not_root.clone(),
            Network::Host,
            false,
            Some("uid"),
        );
        check(
            Mode::BestEffort,
            not_root.clone(),
            Network::Host,
            true,
            Some("uid"),
        );
        // TCP can still be denied by Landlock ABI 4 without a namespace.
        check(
            Mode::BestEffort,
            not_root,
            Network::None,
            true,
            Some("network none"),
        );
        let no_memory = Capabilities {
            cgroup_memory: None,
            ..full()
        };
        check(
            Mode::Required,
            no_memory.clone(),
            Network::Host,
            false,
            Some("memory"),
        );
        check(
            Mode::BestEffort,
            no_memory,
            Network::Host,
            true,
            Some("memory"),
        );
        let no_cgroups = Capabilities {
            cgroup_grouping: false,
            cgroup_memory: None,
            cgroup_pids: None,
            cgroup_cpu: None,
            ..full()
        };
        check(
            Mode::Required,
            no_cgroups.clone(),
            Network::Host,
            false,
            Some("cgroup v2"),
        );
        let decision = decide(Mode::BestEffort, &no_cgroups, Network::Host);
        assert!(decision.allowed.is_ok() && !decision.cgroups);
        assert!(decision
            .warnings
            .iter()
            .any(|w| w.contains("process group")));
    }

    #[test]
    fn modes_and_networks_parse() {
        assert_eq!("required".parse(), Ok(Mode::Required));
        assert_eq!("best-effort".parse(), Ok(Mode::BestEffort));
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert!("strict".parse::<Mode>().is_err());
        assert_eq!("none".parse(), Ok(Network::None));
        assert_eq!("host".parse(), Ok(Network::Host));
        assert!("bridge".parse::<Network>().is_err());
        assert_eq!(Mode::default_for(true), Mode::Required);
        assert_eq!(Mode::default_for(false), Mode::BestEffort);
    }
}
