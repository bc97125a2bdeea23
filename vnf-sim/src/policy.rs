//! The VNF's policy: which flows it allows, what it tells the device to do with them, and when.
//!
//! A TOML file of rules, first match wins, matched against a flow as its first packet travelled
//! (the client's side is the source):
//!
//! ```toml
//! [defaults]                  # for flows no rule matches (these are the defaults' defaults)
//! action = "forward"          # drop | forward | mirror | snoop | inspect (never offload)
//! offload_after = 2           # packets the VNF sees before offloading, or "handshake" (TCP)
//! cache_timeout = 0           # seconds; 0 = the device's default
//!
//! [[rule]]
//! protocol = "udp"            # tcp | udp (omitted: either)
//! src = "10.0.0.0/8"          # prefixes (omitted: any)
//! dst = "2001:db8::/32"
//! dst_ports = "53"            # a port or a range "1000-2000" (omitted: any); src_ports too
//! action = "mirror"
//! next_hop = "198.51.100.9"   # mirror and snoop: where the device sends the copies
//! offload_after = 1
//! cache_timeout = 10
//! ```
//!
//! `drop` means the VNF drops the flow's packets itself and offloads a DROP session;
//! `inspect` means the VNF forwards the flow itself and never offloads it.

use std::net::IpAddr;
use std::path::Path;

use opof_proto::domain::{Action, FiveTuple, Protocol};
use serde::Deserialize;

/// What the VNF does with a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through and offload it with this action (DROP drops at the VNF too).
    Offload(Action),
    /// Let it through, never offload.
    Inspect,
}

impl Verdict {
    /// Does the VNF let the flow's packets through while it handles them itself?
    pub fn allows(&self) -> bool {
        !matches!(self, Verdict::Offload(Action::Drop))
    }
}

/// When a flow is offloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Once the VNF has seen this many packets of the flow (both directions; at least 1).
    Packets(u32),
    /// A TCP flow once its handshake completed (SYN, SYN-ACK, then the client's first ACK);
    /// a UDP flow after its first packet.
    Handshake,
}

/// What a flow gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Treatment {
    pub verdict: Verdict,
    pub trigger: Trigger,
    pub cache_timeout: u32,
}

/// An address prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, len) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not an address prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if len.is_empty() { max } else { len.parse().map_err(|_| format!("{s:?}: bad prefix length"))? };
        if len > max {
            return Err(format!("{s:?}: prefix length above {max}"));
        }
        Ok(Prefix { addr, len })
    }
}

/// A port or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports(u16, u16);

impl Ports {
    fn contains(&self, p: u16) -> bool {
        (self.0..=self.1).contains(&p)
    }
}

impl std::str::FromStr for Ports {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port or a range LOW-HIGH");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let (a, b): (u16, u16) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a > b {
            return Err(bad());
        }
        Ok(Ports(a, b))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    protocol: Option<Protocol>,
    src: Option<Prefix>,
    dst: Option<Prefix>,
    src_ports: Option<Ports>,
    dst_ports: Option<Ports>,
    treatment: Treatment,
}

impl Rule {
    fn matches(&self, t: &FiveTuple) -> bool {
        self.protocol.is_none_or(|p| p == t.protocol())
            && self.src.is_none_or(|p| p.contains(t.src()))
            && self.dst.is_none_or(|p| p.contains(t.dst()))
            && self.src_ports.is_none_or(|p| p.contains(t.src_port()))
            && self.dst_ports.is_none_or(|p| p.contains(t.dst_port()))
    }
}

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Treatment,
}

impl Default for Policy {
    /// Everything forwarded and offloaded FORWARD after 2 packets, the device's default timeout.
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            default: Treatment {
                verdict: Verdict::Offload(Action::Forward),
                trigger: Trigger::Packets(2),
                cache_timeout: 0,
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    defaults: Option<TreatmentSpec>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TreatmentSpec {
    action: Option<String>,
    next_hop: Option<String>,
    offload_after: Option<toml::Value>,
    cache_timeout: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    protocol: Option<String>,
    src: Option<String>,
    dst: Option<String>,
    src_ports: Option<toml::Value>,
    dst_ports: Option<toml::Value>,
    action: Option<String>,
    next_hop: Option<String>,
    offload_after: Option<toml::Value>,
    cache_timeout: Option<u32>,
}

impl RuleSpec {
    fn treatment_spec(&self) -> TreatmentSpec {
        TreatmentSpec {
            action: self.action.clone(),
            next_hop: self.next_hop.clone(),
            offload_after: self.offload_after.clone(),
            cache_timeout: self.cache_timeout,
        }
    }
}

fn treatment(spec: &TreatmentSpec, base: Treatment, at: &str) -> Result<Treatment, String> {
    let hop = || -> Result<IpAddr, String> {
        let h = spec.next_hop.as_deref().ok_or_else(|| format!("{at}: mirror and snoop need next_hop"))?;
        h.parse().map_err(|_| format!("{at}: next_hop {h:?} is not an IP address"))
    };
    let verdict = match spec.action.as_deref() {
        None => base.verdict,
        Some("drop") => Verdict::Offload(Action::Drop),
        Some("forward") => Verdict::Offload(Action::Forward),
        Some("mirror") => Verdict::Offload(Action::Mirror { next_hop: hop()? }),
        Some("snoop") => Verdict::Offload(Action::Snoop { next_hop: hop()? }),
        Some("inspect") => Verdict::Inspect,
        Some(other) => return Err(format!("{at}: action {other:?} is not drop, forward, mirror, snoop or inspect")),
    };
    let trigger = match &spec.offload_after {
        None => base.trigger,
        Some(toml::Value::Integer(n)) if (1..=i64::from(u32::MAX)).contains(n) => Trigger::Packets(*n as u32),
        Some(toml::Value::String(s)) if s == "handshake" => Trigger::Handshake,
        Some(v) => return Err(format!("{at}: offload_after {} is not a packet count (≥ 1) or \"handshake\"", show(v))),
    };
    Ok(Treatment { verdict, trigger, cache_timeout: spec.cache_timeout.unwrap_or(base.cache_timeout) })
}

/// A TOML value as the user wrote it, near enough for an error message.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => format!("{other:?}"),
    }
}

fn ports(v: &Option<toml::Value>, at: &str) -> Result<Option<Ports>, String> {
    match v {
        None => Ok(None),
        Some(toml::Value::Integer(p)) if (0..=65535).contains(p) => Ok(Some(Ports(*p as u16, *p as u16))),
        Some(toml::Value::String(s)) => s.parse().map(Some).map_err(|e| format!("{at}: {e}")),
        Some(v) => Err(format!("{at}: {} is not a port or a range", show(v))),
    }
}

impl Policy {
    /// Parses a policy's TOML text; errors name the rule and the field.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: FileSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        let default = match &file.defaults {
            Some(d) => treatment(d, Policy::default().default, "[defaults]")?,
            None => Policy::default().default,
        };
        let mut rules = Vec::new();
        for (i, r) in file.rules.iter().enumerate() {
            let at = format!("rule {}", i + 1);
            let protocol = match r.protocol.as_deref() {
                None => None,
                Some("tcp") => Some(Protocol::Tcp),
                Some("udp") => Some(Protocol::Udp),
                Some(p) => return Err(format!("{at}: protocol {p:?} is not tcp or udp")),
            };
            let prefix =
                |p: &Option<String>| p.as_deref().map(str::parse).transpose().map_err(|e| format!("{at}: {e}"));
            rules.push(Rule {
                protocol,
                src: prefix(&r.src)?,
                dst: prefix(&r.dst)?,
                src_ports: ports(&r.src_ports, &at)?,
                dst_ports: ports(&r.dst_ports, &at)?,
                treatment: treatment(&r.treatment_spec(), default, &at)?,
            });
        }
        Ok(Policy { rules, default })
    }

    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Policy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The treatment of a flow whose first packet travelled as `t` says.
    pub fn treatment(&self, t: &FiveTuple) -> Treatment {
        self.rules.iter().find(|r| r.matches(t)).map_or(self.default, |r| r.treatment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: Protocol, src: &str, sp: u16, dst: &str, dp: u16) -> FiveTuple {
        FiveTuple::new(p, src.parse().unwrap(), sp, dst.parse().unwrap(), dp).unwrap()
    }

    #[test]
    fn first_matching_rule_wins_and_defaults_fill_the_rest() {
        let p = Policy::parse(
            r#"
            [defaults]
            action = "forward"
            offload_after = 3
            cache_timeout = 20

            [[rule]]
            protocol = "udp"
            dst_ports = 53
            action = "inspect"

            [[rule]]
            src = "10.1.0.0/16"
            dst_ports = "8000-8099"
            action = "mirror"
            next_hop = "198.51.100.9"
            offload_after = "handshake"

            [[rule]]
            dst = "2001:db8::/32"
            action = "drop"
            offload_after = 1
            "#,
        )
        .unwrap();
        let dns = p.treatment(&t(Protocol::Udp, "10.1.2.3", 5000, "8.8.8.8", 53));
        assert_eq!(dns.verdict, Verdict::Inspect);
        assert_eq!((dns.trigger, dns.cache_timeout), (Trigger::Packets(3), 20), "defaults fill what a rule omits");
        let web = p.treatment(&t(Protocol::Tcp, "10.1.2.3", 5000, "192.0.2.1", 8080));
        assert_eq!(web.verdict, Verdict::Offload(Action::Mirror { next_hop: "198.51.100.9".parse().unwrap() }));
        assert_eq!(web.trigger, Trigger::Handshake);
        let other = p.treatment(&t(Protocol::Tcp, "10.2.2.3", 5000, "192.0.2.1", 8080));
        assert_eq!(other.verdict, Verdict::Offload(Action::Forward));
        let v6 = p.treatment(&t(Protocol::Tcp, "fd00::1", 1, "2001:db8::5", 80));
        assert_eq!((v6.verdict, v6.trigger), (Verdict::Offload(Action::Drop), Trigger::Packets(1)));
        assert!(!v6.verdict.allows());
    }

    #[test]
    fn bad_policies_are_refused_naming_the_rule() {
        for (text, says) in [
            ("[[rule]]\naction = \"mirror\"", "rule 1: mirror and snoop need next_hop"),
            ("[[rule]]\nprotocol = \"icmp\"", "rule 1: protocol \"icmp\""),
            ("[[rule]]\ndst = \"10.0.0.0/33\"", "prefix length above 32"),
            ("[[rule]]\ndst_ports = \"9-1\"", "not a port or a range"),
            ("[defaults]\noffload_after = 0", "[defaults]: offload_after 0"),
            ("[[rule]]\naction = \"allow\"", "action \"allow\""),
            ("[[rule]]\ncolour = \"red\"", "unknown field"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
