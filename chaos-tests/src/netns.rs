//! A second host for tests that need a client that is *not* on loopback: a network namespace
//! joined to this one by a veth pair on a /30 of 198.18.0.0/16 (`198.18.X.1` here, `.2` there).
//! Needs root (CI runs as root); a test that cannot create one fails and says why. Removed on drop.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with one veth link to the test's own namespace.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    host_if: String,
    /// This side's address (where servers of the test listen).
    pub host_ip: String,
    /// The namespace's address (where its clients come from).
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (Debian's iproute2)")?;
    if !o.status.success() {
        bail!(
            "ip {} failed: {} (network namespaces need root: run the tests as root, as CI does)",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates the namespace and its link; both ends are up.
    pub fn new() -> anyhow::Result<Netns> {
        // Distinct per process and per call, so parallel test processes never collide.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 1000) * 16 + n % 16;
        let name = format!("cvt{tag}");
        let host_if = format!("cvh{tag}");
        let ns_if = format!("cvn{tag}");
        // One /30 per tag in 198.18.0.0/16, the range set aside for network tests (RFC 2544), so
        // it meets no address a CI host or a container network already routes (tag < 16,000,
        // so 4 × tag < 65,536).
        let base = tag * 4;
        let (hi, lo) = ((base >> 8) & 255, base & 255);
        let (host_ip, ns_ip) = (
            format!("198.18.{hi}.{}", lo + 1),
            format!("198.18.{hi}.{}", lo + 2),
        );
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `program args` inside the namespace.
    pub fn run(
        &self,
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Output> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .env_remove("CARAVEL_API_HOST")
            .env_remove("CARAVEL_API_PORT")
            .env_remove("CARAVEL_API_KEY");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().context("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
