//! The bpf(2) calls aya 0.14 does not offer: `BPF_MAP_LOOKUP_BATCH` (a whole
//! hash map in a few calls instead of two per entry), `BPF_MAP_UPDATE_BATCH`
//! (many group tables swapped in with one call: each single update of an
//! array of maps waits for an RCU grace period) and `BPF_PROG_TEST_RUN` on a
//! bare program fd (aya runs it only on the program object, which the flow
//! sweeper's thread does not own; the data plane's clock, `clock.rs`). The
//! one other place in userspace with `unsafe` besides `mmap`.
#![allow(unsafe_code)]

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya::Pod;
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Runs the XDP program `fd` once on `data` (BPF_PROG_TEST_RUN) and
/// copies the frame it leaves into `out`; returns the program's verdict and
/// the length of that frame.
pub fn test_run(fd: BorrowedFd<'_>, data: &[u8], out: &mut [u8]) -> io::Result<(u32, usize)> {
    let mut attr = zeroed_attr();
    attr.test.prog_fd = fd.as_raw_fd() as u32;
    attr.test.data_in = data.as_ptr() as u64;
    attr.test.data_size_in = data.len() as u32;
    attr.test.data_out = out.as_mut_ptr() as u64;
    attr.test.data_size_out = out.len() as u32;
    attr.test.repeat = 1;
    bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    // SAFETY: the kernel wrote the verdict and the output size back into
    // the same members.
    let (verdict, len) = unsafe { (attr.test.retval, attr.test.data_size_out) };
    Ok((verdict, (len as usize).min(out.len())))
}

/// Reads every entry of the hash map `fd` (keys `K`, values `V`, which must
/// be the map's key and value sizes), `chunk` entries per syscall, and hands
/// each to `each`. An entry that is added or removed during the walk may or
/// may not be seen; every other entry is seen once.
pub fn lookup_all<K: Pod + Default, V: Pod + Default>(
    fd: BorrowedFd<'_>,
    chunk: u32,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    let chunk = chunk.max(1);
    let mut keys = vec![K::default(); chunk as usize];
    let mut values = vec![V::default(); chunk as usize];
    // The kernel's batch token for hash maps is a bucket index (u32); a u64
    // leaves room. The first call passes none (start of the map).
    let mut in_token = 0u64;
    let mut out_token = 0u64;
    let mut first = true;
    loop {
        let mut attr = zeroed_attr();
        attr.batch.in_batch = if first {
            0
        } else {
            &in_token as *const u64 as u64
        };
        attr.batch.out_batch = &mut out_token as *mut u64 as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = chunk;
        attr.batch.map_fd = fd.as_raw_fd() as u32;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote the count back into the same member.
        let count = unsafe { attr.batch.count } as usize;
        let done = match result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for (k, v) in keys.iter().zip(&values).take(count.min(chunk as usize)) {
            each(k, v);
        }
        if done {
            return Ok(());
        }
        in_token = out_token;
        first = false;
    }
}

/// Reads the values of keys `0..n` of the array map `fd` (per-CPU or not)
/// with `BPF_MAP_LOOKUP_BATCH`, at most `chunk` keys per call, in key
/// order: `stride` bytes per key (a per-CPU array's value, rounded up to 8
/// bytes, times the possible CPUs). Keys past the map's end are not read.
pub fn lookup_array(fd: BorrowedFd<'_>, n: u32, stride: usize, chunk: u32) -> io::Result<Vec<u8>> {
    let chunk = chunk.max(1);
    let mut out = vec![0u8; n as usize * stride];
    let mut keys = vec![0u32; chunk as usize];
    // An array's batch token is a key (u32).
    let mut in_token = 0u32;
    let mut out_token = 0u32;
    let mut done = 0usize;
    while done < n as usize {
        let want = (n as usize - done).min(chunk as usize);
        let mut attr = zeroed_attr();
        attr.batch.in_batch = if done == 0 {
            0
        } else {
            &in_token as *const u32 as u64
        };
        attr.batch.out_batch = &mut out_token as *mut u32 as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = out[done * stride..].as_mut_ptr() as u64;
        attr.batch.count = want as u32;
        attr.batch.map_fd = fd.as_raw_fd() as u32;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote the count back into the same member.
        let count = (unsafe { attr.batch.count } as usize).min(want);
        done += count;
        match result {
            Ok(()) if count > 0 => {}
            // The end of the map (ENOENT), or nothing more to read.
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        in_token = out_token;
    }
    out.truncate(done * stride);
    Ok(out)
}

/// Reads element `key` of the array map `fd` into `value` (a per-CPU
/// array's: every CPU's value, each rounded up to 8 bytes).
pub fn lookup_elem(fd: BorrowedFd<'_>, key: u32, value: &mut [u8]) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr)
}

/// Sets `keys[i]` to `values[i]` in the map `fd`, whose keys are 4 bytes
/// and whose values are `V` (an array of maps: `u32` map fds), in one call.
pub fn update_batch<V: Pod>(fd: BorrowedFd<'_>, keys: &[u32], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    let mut attr = zeroed_attr();
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.as_ptr() as u64;
    attr.batch.count = keys.len() as u32;
    attr.batch.map_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr)?;
    // SAFETY: the kernel wrote the count of elements done into the same member.
    let done = unsafe { attr.batch.count } as usize;
    if done != keys.len() {
        return Err(io::Error::other(format!(
            "batch update stopped after {done} of {} elements",
            keys.len()
        )));
    }
    Ok(())
}

/// Deletes element `key` of the map `fd` (an array of maps: clears it).
pub fn delete(fd: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr)
}

/// Opens the object pinned at `path` (BPF_OBJ_GET).
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = bpf_fd(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link `fd` from its hook (BPF_LINK_DETACH), whoever else
/// holds it: an XDP link leaves its interface at once.
pub fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr)
}

/// The interface index an XDP link is attached to; 0 once the interface is
/// gone (the link is then defunct).
pub fn xdp_link_ifindex(fd: BorrowedFd<'_>) -> io::Result<u32> {
    use aya_obj::generated::bpf_link_info;
    // SAFETY: bpf_link_info is a C struct of plain integers and unions of
    // them; all zeros is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = &mut info as *mut bpf_link_info as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.type_ != aya_obj::generated::bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
        return Err(io::Error::other(format!(
            "link type {} is not XDP",
            info.type_
        )));
    }
    // SAFETY: for an XDP link the kernel filled the `xdp` member.
    Ok(unsafe { info.__bindgen_anon_1.xdp.ifindex })
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of plain integers; all zeros is the
    // value the kernel expects for every field not set.
    unsafe { std::mem::zeroed() }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    bpf_fd(cmd, attr).map(|_| ())
}

/// The bpf(2) call; its non-negative result (a new descriptor for the
/// commands that make one).
fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i32> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size
    // passed; the pointers in it point at buffers the caller keeps alive and
    // sized for `count` keys and values.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_all_reports_a_bad_fd() {
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd as _;
        let err = lookup_all::<u32, u64>(file.as_fd(), 16, |_, _| {}).unwrap_err();
        // Not a BPF map (EINVAL), or no permission to call bpf (EPERM).
        assert!(
            matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EPERM)),
            "{err}"
        );
    }
}
