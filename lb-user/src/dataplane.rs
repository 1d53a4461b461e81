//! The only writer of BPF maps.
