//! The one way to reach a map of the loaded object: by name, as an aya map
//! type ([`open`], [`open_mut`]) or as the bare map ([`data`], for the raw
//! syscalls of `sys`); the errors that name the map; and what a delete of a
//! missing key returns.
use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
};

use super::DataplaneError;

/// The map `name` of `ebpf` as `M` (an aya map type over `&Map`).
pub(super) fn open<'a, M>(ebpf: &'a Ebpf, name: &'static str) -> Result<M, DataplaneError>
where
    M: TryFrom<&'a Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// The map `name` of `ebpf` as `M` (an aya map type over `&mut Map`).
pub(super) fn open_mut<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, DataplaneError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// The map `name` of `ebpf` itself.
pub(super) fn data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, DataplaneError> {
    ebpf.map(name)
        .and_then(as_data)
        .ok_or(DataplaneError::MissingMap(name))
}

/// The map behind a map of the object (the kinds it has).
pub(super) fn as_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::ArrayOfMaps(data) => Some(data),
        _ => None,
    }
}

pub(super) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// A failed raw syscall on the map `name`.
pub(super) fn io_err(name: &'static str) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        source: MapError::IoError(e),
    }
}

/// Whether a delete found its key (a delete of a missing key fails with
/// ENOENT).
pub(super) fn removed(result: Result<(), MapError>) -> Result<bool, MapError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

impl super::Dataplane {
    /// The map `name` as `M` (an aya map type over `&Map`).
    pub(super) fn open<'a, M>(&'a self, name: &'static str) -> Result<M, DataplaneError>
    where
        M: TryFrom<&'a Map, Error = MapError>,
    {
        open(&self.ebpf, name)
    }

    /// The map `name` as `M` (an aya map type over `&mut Map`).
    pub(super) fn open_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, DataplaneError>
    where
        M: TryFrom<&'a mut Map, Error = MapError>,
    {
        open_mut(&mut self.ebpf, name)
    }

    /// The map `name` itself.
    pub(super) fn map_data(&self, name: &'static str) -> Result<&MapData, DataplaneError> {
        data(&self.ebpf, name)
    }
}
