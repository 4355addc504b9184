//! Who this machine is: hostname and addresses, from configuration, the instance metadata
//! service, or (for the private address) the interface the default route leaves from.

use std::net::UdpSocket;

use crate::imds::Imds;

/// The machine's name as the kernel knows it.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// The address of the interface that routes to the outside. A connected UDP socket sends
/// nothing; it only makes the kernel pick the source address.
pub(crate) fn routed_private_ip() -> Option<String> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then(|| ip.to_string())
}

/// Where an address came from, for the record and the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The address.
    pub ip: String,
    /// `config`, `option`, `imds` or `route`.
    pub source: &'static str,
}

/// The first address among: an explicit one, then IMDS (`imds_path`), then the default route
/// (private addresses only).
pub(crate) fn address(
    explicit: Option<(&str, &'static str)>,
    imds: Option<&Imds>,
    imds_path: &str,
    use_route: bool,
) -> Option<Found> {
    if let Some((ip, source)) = explicit.filter(|(ip, _)| !ip.trim().is_empty()) {
        return Some(Found {
            ip: ip.trim().to_owned(),
            source,
        });
    }
    if let Some(ip) = imds.and_then(|i| i.get(imds_path)) {
        return Some(Found { ip, source: "imds" });
    }
    if use_route {
        return routed_private_ip().map(|ip| Found {
            ip,
            source: "route",
        });
    }
    None
}
