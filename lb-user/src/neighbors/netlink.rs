//! Netlink plumbing: connections, the few requests this module makes (each
//! under a timeout), and a blocking socket for the clean-up in `Drop`, which
//! cannot await.
use std::{
    fmt,
    future::Future,
    io,
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt, channel::mpsc::UnboundedReceiver};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::LinkAttribute,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
        NeighbourState,
    },
};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
        NetlinkPayload,
    },
    sys::{SocketAddr, protocols::NETLINK_ROUTE},
};

use super::NetError;

/// Longest wait for any one netlink request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed request: which, on which interface, and the kernel's error
/// (`None`: no answer in time).
#[derive(Debug)]
pub(super) struct Failure {
    pub iface: String,
    pub what: String,
    pub error: Option<io::Error>,
}

impl Failure {
    pub fn is_errno(&self, errno: i32) -> bool {
        self.error.as_ref().and_then(io::Error::raw_os_error) == Some(errno)
    }

    pub fn into_net_error(self) -> NetError {
        let Self { iface, what, error } = self;
        match error {
            Some(source) => NetError::Netlink {
                iface,
                what,
                source,
            },
            None => NetError::Timeout { iface, what },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{} on {}: {e}", self.what, self.iface),
            None => write!(
                f,
                "{} on {}: no answer in {REQUEST_TIMEOUT:?}",
                self.what, self.iface
            ),
        }
    }
}

fn io_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Runs one request under [`REQUEST_TIMEOUT`].
pub(super) async fn timed<T>(
    iface: &str,
    what: &str,
    request: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, Failure> {
    let failure = |error| Failure {
        iface: iface.to_string(),
        what: what.to_string(),
        error,
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failure(Some(io_error(e)))),
        Err(_) => Err(failure(None)),
    }
}

/// A request connection; its I/O task runs until the handle is dropped.
pub(super) fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetError::Socket { source })?;
    tokio::spawn(conn);
    Ok(handle)
}

pub(super) type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Neighbour table notifications (`RTNLGRP_NEIGH`), on their own socket so a
/// burst of them cannot crowd out the answers to our requests. Runs until the
/// receiver is dropped.
pub(super) fn monitor() -> Result<Events, NetError> {
    let (conn, _, events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh])
        .map_err(|source| NetError::Socket { source })?;
    tokio::spawn(conn);
    Ok(events)
}

/// The name of interface `index`.
pub(super) async fn link_name(handle: &Handle, index: u32) -> Result<String, NetError> {
    let iface = format!("#{index}");
    let links = timed(&iface, "read link", async {
        handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect::<Vec<_>>()
            .await
    });
    let link = match links.await {
        Ok(links) => links
            .into_iter()
            .next()
            .ok_or(NetError::NoSuchIndex { index })?,
        Err(e) if e.is_errno(libc::ENODEV) => return Err(NetError::NoSuchIndex { index }),
        Err(e) => return Err(e.into_net_error()),
    };
    Ok(link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or(iface))
}

/// The whole neighbour table (IPv4 and IPv6, all interfaces).
pub(super) async fn neighbours(
    handle: &Handle,
    iface: &str,
) -> Result<Vec<NeighbourMessage>, Failure> {
    timed(
        iface,
        "read neighbours",
        handle.neighbours().get().execute().try_collect(),
    )
    .await
}

fn neighbour(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = ifindex;
    let (family, addr) = match ip {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(addr));
    msg
}

async fn ack(
    handle: &Handle,
    iface: &str,
    what: &str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), Failure> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut handle = handle.clone();
    timed(iface, what, async move {
        let mut answers = handle.request(req)?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    })
    .await
}

/// Makes `ip`'s entry a managed one: creates it (`ip neigh add ADDR dev DEV
/// managed`, fails with EEXIST if there is one) or converts the existing one,
/// keeping its address and state (fails with ENOENT if there is none).
pub(super) async fn make_managed(
    handle: &Handle,
    iface: &str,
    ifindex: u32,
    ip: IpAddr,
    create: bool,
) -> Result<(), Failure> {
    let mut msg = neighbour(ifindex, ip);
    // NUD_NONE: the kernel refuses PERMANENT managed entries and starts a
    // new one unresolved.
    msg.header.state = NeighbourState::None;
    msg.attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    let (what, flags) = if create {
        ("add managed neighbour", NLM_F_CREATE | NLM_F_EXCL)
    } else {
        ("make neighbour managed", NLM_F_REPLACE)
    };
    ack(
        handle,
        iface,
        &format!("{what} {ip}"),
        RouteNetlinkMessage::NewNeighbour(msg),
        flags,
    )
    .await
}

/// Asks the kernel to resolve `ip` now (`NTF_USE`, like `ip neigh replace ADDR
/// dev DEV use`): an INCOMPLETE or FAILED entry sends a new solicitation, a
/// STALE one is re-confirmed; nothing but ARP/NDP goes on the wire. With
/// `create` a missing entry is created (an ordinary one); otherwise ENOENT.
///
/// `managed` must say whether the entry is managed: since Linux 5.16 an
/// `NTF_USE` request also sets the entry's managed flag to what it carries.
pub(super) async fn kick(
    handle: &Handle,
    iface: &str,
    ifindex: u32,
    ip: IpAddr,
    managed: bool,
    create: bool,
) -> Result<(), Failure> {
    let mut msg = neighbour(ifindex, ip);
    msg.header.flags = NeighbourFlags::Use;
    if managed {
        msg.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    }
    let flags = if create {
        NLM_F_CREATE | NLM_F_REPLACE
    } else {
        NLM_F_REPLACE
    };
    ack(
        handle,
        iface,
        &format!("resolve neighbour {ip}"),
        RouteNetlinkMessage::NewNeighbour(msg),
        flags,
    )
    .await
}

/// Removes `ip`'s entry.
pub(super) async fn delete(
    handle: &Handle,
    iface: &str,
    ifindex: u32,
    ip: IpAddr,
) -> Result<(), Failure> {
    let msg = RouteNetlinkMessage::DelNeighbour(neighbour(ifindex, ip));
    ack(handle, iface, &format!("remove neighbour {ip}"), msg, 0).await
}

/// A blocking netlink socket, opened with the watch (so in its network
/// namespace), to remove entries where nothing can be awaited.
pub(super) struct BlockingSocket {
    socket: rtnetlink::sys::Socket,
    seq: AtomicU32,
}

impl BlockingSocket {
    pub fn open() -> Result<Self, NetError> {
        let open = || {
            let mut socket = rtnetlink::sys::Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        };
        let socket = open().map_err(|source| NetError::Socket { source })?;
        Ok(Self {
            socket,
            seq: AtomicU32::new(1),
        })
    }

    /// Removes `ip`'s entry and waits for the kernel's answer.
    pub fn delete(&self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        let mut req =
            NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(neighbour(ifindex, ip)));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            let mut buf = Vec::with_capacity(8192);
            self.socket.recv(&mut buf, 0)?;
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                // Messages in one datagram start on 4-byte boundaries.
                let len = (answer.header.length as usize)
                    .next_multiple_of(4)
                    .clamp(1, rest.len());
                rest = &rest[len..];
                if answer.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = answer.payload {
                    return if e.code.is_none() {
                        Ok(())
                    } else {
                        Err(e.to_io())
                    };
                }
            }
        }
    }
}
