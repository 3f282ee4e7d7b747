//! Test hosts that are really apart (CONTRIBUTING.md "Tests"): each [`Host`] is a
//! network namespace of its own, joined to this one by a veth pair. A process
//! run on it (`ip netns exec`) reaches the server only over that link, so
//! setting the link down ([`Host::cut`]) makes its sockets go silent as on a
//! real network: no reset, no error, just nothing.
//!
//! Host `k` has the addresses 198.18.k.1 (this end: where the server is
//! reached) and 198.18.k.2 (its end), in 198.18.0.0/15, the range set aside
//! for benchmarking networks: nothing is ever sent anywhere else. Dropping a
//! `Host` removes its namespace, and the veth pair with it.
//!
//! Creating namespaces needs root (or `CAP_NET_ADMIN`): without it
//! [`available`] says no and the tests say they are skipped, unless
//! `MIXTAPE_REQUIRE_NETNS` is set (as `.ci/run` does): then they fail.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `ip ARGS`; whether it succeeded (its output discarded).
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process may create network namespaces (probed once, by
/// creating and removing one). Says why not when it may not.
pub fn available() -> bool {
    let probe = format!("mxtprobe{}", std::process::id());
    let ok = ip(&["netns", "add", &probe]);
    if ok {
        ip(&["netns", "del", &probe]);
        return true;
    }
    if std::env::var_os("MIXTAPE_REQUIRE_NETNS").is_some() {
        panic!("MIXTAPE_REQUIRE_NETNS is set but network namespaces cannot be created here (root needed)");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: cannot create network namespaces (ip netns add needs root); CI runs these as root"
    );
    false
}

/// Removes the namespaces of earlier test runs that are gone (killed before
/// their `Host`s were dropped), so that their addresses are free again.
fn remove_leftovers() {
    let Ok(listed) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("mxt") else {
            continue;
        };
        let pid = rest.split('h').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            ip(&["netns", "del", name]);
        }
    }
}

/// A test host: a network namespace with one link to this one.
pub struct Host {
    /// The namespace's name.
    pub name: String,
    /// The veth end in this namespace (the one a cut sets down).
    near_end: String,
    /// Where a process on the host reaches this one (and the server).
    pub server_address: String,
}

impl Host {
    /// Host `k` (1 to 250), made now: panics when it cannot be.
    pub fn new(k: u8) -> Host {
        assert!((1..=250).contains(&k), "host numbers are 1 to 250");
        remove_leftovers();
        let pid = std::process::id() % 100_000;
        let host = Host {
            name: format!("mxt{pid}h{k}"),
            near_end: format!("mxn{pid}h{k}"),
            server_address: format!("198.18.{k}.1"),
        };
        let far_end = format!("mxf{pid}h{k}");
        let near_cidr = format!("{}/30", host.server_address);
        let far_cidr = format!("198.18.{k}.2/30");
        let netns = ["netns", "exec", host.name.as_str(), "ip"];
        let steps: [Vec<&str>; 8] = [
            vec!["netns", "add", &host.name],
            vec![
                "link",
                "add",
                &host.near_end,
                "type",
                "veth",
                "peer",
                "name",
                &far_end,
            ],
            vec!["link", "set", &far_end, "netns", &host.name],
            vec!["addr", "add", &near_cidr, "dev", &host.near_end],
            vec!["link", "set", &host.near_end, "up"],
            [&netns[..], &["addr", "add", &far_cidr, "dev", &far_end]].concat(),
            [&netns[..], &["link", "set", &far_end, "up"]].concat(),
            [&netns[..], &["link", "set", "lo", "up"]].concat(),
        ];
        for step in &steps {
            assert!(
                ip(step),
                "setting up test host {}: ip {}",
                host.name,
                step.join(" ")
            );
        }
        host
    }

    /// A command that runs `program` on this host.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Cuts the host off: its link goes down, its packets are dropped
    /// silently in both directions.
    pub fn cut(&self) {
        assert!(
            ip(&["link", "set", &self.near_end, "down"]),
            "cutting {}",
            self.name
        );
    }

    /// Puts the link back up.
    pub fn mend(&self) {
        assert!(
            ip(&["link", "set", &self.near_end, "up"]),
            "mending {}",
            self.name
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and the pair with it.
        ip(&["netns", "del", &self.name]);
        ip(&["link", "del", &self.near_end]);
    }
}
