//! ICMP errors about a flow (README "Fragments and ICMP errors"): a router
//! that cannot pass a target's reply (too big for its next link, TTL
//! exceeded, unreachable) sends its error to the reply's source, the VIP,
//! so it reaches `lb`. It goes to the target that owns the flow it quotes:
//! the one the flow's entry names, else the one the group's hash gives the
//! flow (where its packets go when the table does not hold it). It changes
//! no entry.
use aya_ebpf::programs::XdpContext;
use lb_common::{Config, Counter, FlowKey, ListenerInfo};

use super::{
    counters::count,
    flows::Entry,
    forward,
    select::{self, Selected, usable},
};

/// Forwards an ICMP error about `flow` (its `entry`, if the table holds
/// one) to the flow's target.
#[inline(always)]
pub fn error(
    ctx: &XdpContext,
    flow: &FlowKey,
    listener: &ListenerInfo,
    entry: Option<Entry>,
    config: &Config,
) -> Result<u32, u32> {
    if let Some(entry) = entry
        && let Some(info) = usable(entry.target_id(), listener.group_id)
    {
        count(Counter::IcmpError);
        let target = Selected {
            id: entry.target_id(),
            info,
            new_flow: false,
        };
        return forward(ctx, listener, &target, config);
    }
    let target = select::by_hash(flow, listener, select::NO_EXCEPTION)?;
    count(Counter::IcmpErrorUnmatched);
    forward(ctx, listener, &target, config)
}
