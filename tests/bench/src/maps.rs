//! The benchmark's way to the maps of a loaded program: by name among
//! those its program uses, and the kernel memory charged to one.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{MapData, MapInfo},
    programs::Xdp,
};

/// The map `name` among the maps `program` uses.
pub fn program_map(program: &Xdp, name: &str) -> Result<MapData> {
    let ids = program
        .info()?
        .map_ids()?
        .context("the kernel lists no maps for the program")?;
    for id in ids {
        if MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some(name)) {
            return MapData::from_id(id).with_context(|| format!("open map {name}"));
        }
    }
    bail!("the program uses no map {name}")
}

/// Kernel memory charged to `map`: the `memlock:` line of its fdinfo.
pub fn memlock(map: &MapData) -> Result<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    let path = format!("/proc/self/fdinfo/{fd}");
    let info = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock in {path}"))
}
