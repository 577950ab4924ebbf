//! The tc ingress rule of `dataplane.io: packet_ring`: GENEVE to the appliance is dropped
//! after the packet tap has copied it into the workers' rings, so that the kernel's IP and UDP
//! layers do no work on it (and answer nothing: no socket is bound to the port).
//! Must not depend on: the pipeline, policy, labels, the data plane, tokio.
//!
//! Packet taps (`ETH_P_ALL` sockets) see a frame before tc ingress; a `bpf` classifier in
//! direct-action mode running the rings' own filter program (`ring::geneve_filter`, so the
//! two can never disagree on what is GENEVE) returns "drop" for exactly what the rings took
//! and "continue" for everything else. The rule is tc filter preference = the listen port on
//! the listen interface's `clsact` qdisc: `tc filter show dev IF ingress pref 6081` shows it.
//! It is made with the `tc` program (iproute2), which needs CAP_NET_ADMIN: the appliance runs
//! it itself when it may (root, tests), else it must find the rule installed already (the
//! systemd unit's privileged `ExecStartPre`, see docs/operations.md) and leaves its removal
//! to whoever installed it.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::ring::{TC_ACT_SHOT, TC_ACT_UNSPEC, bytecode_text, geneve_filter};

/// The rule on one interface; removed by [`IngressRule::remove`] when this process made it.
#[derive(Debug)]
pub struct IngressRule {
    interface: String,
    port: u16,
    /// This process installed the rule (and should remove it).
    owned: bool,
    /// This process added the `clsact` qdisc (and should remove it when nothing else uses it).
    made_qdisc: bool,
}

impl IngressRule {
    /// Installs (or replaces) the rule dropping GENEVE to `addresses` (the rings' tap point)
    /// and `port` on `interface`; when that is not permitted, accepts one that is already
    /// there.
    pub fn install(
        interface: &str,
        addresses: &[Ipv4Addr],
        port: u16,
    ) -> Result<IngressRule, String> {
        let qdiscs = tc(&["qdisc", "show", "dev", interface])?;
        let mut made_qdisc = false;
        if !qdiscs.contains("qdisc clsact") {
            match tc(&["qdisc", "add", "dev", interface, "clsact"]) {
                Ok(_) => made_qdisc = true,
                Err(error) => return IngressRule::existing(interface, port, error),
            }
        }
        let program = bytecode_text(&geneve_filter(addresses, port, TC_ACT_SHOT, TC_ACT_UNSPEC));
        let pref = port.to_string();
        let added = tc(&[
            "filter",
            "replace",
            "dev",
            interface,
            "ingress",
            "pref",
            &pref,
            "handle",
            "1",
            "protocol",
            "ip",
            "bpf",
            "bytecode",
            &program,
            "direct-action",
        ]);
        let rule = IngressRule { interface: interface.to_string(), port, owned: true, made_qdisc };
        match added {
            Ok(_) => Ok(rule),
            Err(error) => {
                rule.remove();
                IngressRule::existing(interface, port, error)
            }
        }
    }

    /// The rule someone else installed, if it is there.
    fn existing(interface: &str, port: u16, error: String) -> Result<IngressRule, String> {
        if present(interface, port) {
            Ok(IngressRule {
                interface: interface.to_string(),
                port,
                owned: false,
                made_qdisc: false,
            })
        } else {
            Err(format!(
                "cannot install the tc ingress rule that keeps GENEVE out of the kernel's UDP \
                 stack on {interface} ({error}); it needs CAP_NET_ADMIN, or the rule installed \
                 beforehand (docs/operations.md)"
            ))
        }
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Whether this process installed the rule.
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Removes the rule (and the qdisc this process added, if nothing else uses it) when this
    /// process installed it; logs what it could not remove.
    pub fn remove(self) {
        if !self.owned {
            return;
        }
        if let Err(error) = remove_filter(&self.interface, self.port, self.made_qdisc) {
            tracing::warn!(interface = %self.interface, %error, "cannot remove the tc ingress rule");
        }
    }
}

/// Removes the rule for `port` from `interface` and the `clsact` qdisc if nothing else uses it
/// (`labelwall ingress-rule remove`, for a rule another process installed).
pub fn remove(interface: &str, port: u16) -> Result<(), String> {
    remove_filter(interface, port, true)
}

fn remove_filter(interface: &str, port: u16, qdisc_too: bool) -> Result<(), String> {
    let pref = port.to_string();
    tc(&["filter", "del", "dev", interface, "ingress", "pref", &pref])?;
    if qdisc_too {
        let empty = |direction| {
            tc(&["filter", "show", "dev", interface, direction])
                .is_ok_and(|text| text.trim().is_empty())
        };
        if empty("ingress") && empty("egress") {
            let _ = tc(&["qdisc", "del", "dev", interface, "clsact"]);
        }
    }
    Ok(())
}

/// Whether a rule of ours for `port` is on `interface`.
pub fn present(interface: &str, port: u16) -> bool {
    let pref = port.to_string();
    tc(&["filter", "show", "dev", interface, "ingress", "pref", &pref])
        .is_ok_and(|text| text.contains(" bpf "))
}

/// Runs `tc ARGS`; its output, or what it said on failure.
fn tc(args: &[&str]) -> Result<String, String> {
    let output = Command::new("tc")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run tc (iproute2): {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "tc {} failed: {}",
            args[..2].join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
