//! Interface facts and target MAC resolution over netlink.
