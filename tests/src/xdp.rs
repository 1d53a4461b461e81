//! The lab's own XDP programs, a few BPF instructions each, loaded with
//! BPF_PROG_LOAD and attached in driver (native) mode with a bpf_link: the
//! tests build no eBPF of their own (aya loads programs only from an object
//! file).
//!
//! - [`PASS`]: XDP_PASS for every frame. The lab attaches it to the bridge
//!   port facing the load balancer: a veth only delivers frames sent with
//!   native XDP_TX when its peer has an XDP program of its own
//!   (TOOLCHAIN.md).
//! - [`REFLECT`]: swaps the frame's MAC addresses and sends it back out
//!   (XDP_TX), so a lab test can check that native XDP_TX reaches the
//!   segment without the load balancer.
//!
//! Instructions are encoded for a little-endian host (the BPF target of
//! x86-64 and arm64).
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{
    XDP_FLAGS_DRV_MODE, bpf_attach_type::BPF_XDP, bpf_attr, bpf_attr__bindgen_ty_4,
    bpf_attr__bindgen_ty_14, bpf_cmd, bpf_prog_type::BPF_PROG_TYPE_XDP,
};

use crate::model::{XDP_PASS, XDP_TX};

/// An XDP program as BPF instructions.
pub struct Program {
    /// Its name in the kernel (at most 15 bytes).
    pub name: &'static str,
    pub insns: &'static [u64],
}

// Opcodes (class | size or operation | source).
const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const LDX_H: u8 = 0x69; // dst = *(u16 *)(src + off)
const STX_W: u8 = 0x63; // *(u32 *)(dst + off) = src
const STX_H: u8 = 0x6b; // *(u16 *)(dst + off) = src
const MOV_K: u8 = 0xb7; // dst = imm
const MOV_X: u8 = 0xbf; // dst = src
const ADD_K: u8 = 0x07; // dst += imm
const JGT_X: u8 = 0x2d; // if dst > src: skip off instructions
const EXIT: u8 = 0x95; // return r0

/// One instruction (`struct bpf_insn`, little-endian).
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | (src << 4)) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// XDP_PASS for every frame.
pub const PASS: Program = Program {
    name: "lab_pass",
    insns: &[
        insn(MOV_K, 0, 0, 0, XDP_PASS as i32),
        insn(EXIT, 0, 0, 0, 0),
    ],
};

/// Both MAC addresses swapped, then XDP_TX; a frame shorter than an
/// Ethernet header passes. r1 is the `xdp_md` context: `data` at offset 0,
/// `data_end` at 4.
pub const REFLECT: Program = Program {
    name: "lab_reflect",
    insns: &[
        insn(LDX_W, 2, 1, 0, 0), // r2 = data
        insn(LDX_W, 3, 1, 4, 0), // r3 = data_end
        insn(MOV_K, 0, 0, 0, XDP_PASS as i32),
        insn(MOV_X, 4, 2, 0, 0),
        insn(ADD_K, 4, 0, 0, 14),
        insn(JGT_X, 4, 3, 9, 0), // data + 14 > data_end: to the exit
        insn(LDX_W, 4, 2, 0, 0), // destination MAC
        insn(LDX_H, 5, 2, 4, 0),
        insn(LDX_W, 6, 2, 6, 0), // source MAC
        insn(LDX_H, 7, 2, 10, 0),
        insn(STX_W, 2, 6, 0, 0),
        insn(STX_H, 2, 7, 4, 0),
        insn(STX_W, 2, 4, 6, 0),
        insn(STX_H, 2, 5, 10, 0),
        insn(MOV_K, 0, 0, 0, XDP_TX as i32),
        insn(EXIT, 0, 0, 0, 0),
    ],
};

/// A program attached to an interface; detached when dropped (the link is
/// not pinned).
pub struct Attached {
    _link: OwnedFd,
    _program: OwnedFd,
}

/// Loads `program` and attaches it to `iface` (of the calling thread's
/// network namespace) in driver mode.
pub fn attach_native(program: &Program, iface: &str) -> io::Result<Attached> {
    let loaded = load(program)?;
    let name = CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::other(format!("no interface {iface}")));
    }
    // SAFETY: bpf_attr is plain integers; zeros are their defaults.
    let mut link: bpf_attr__bindgen_ty_14 = unsafe { std::mem::zeroed() };
    link.__bindgen_anon_1.prog_fd = loaded.as_raw_fd() as u32;
    link.__bindgen_anon_2.target_ifindex = ifindex;
    link.attach_type = BPF_XDP as u32;
    link.flags = XDP_FLAGS_DRV_MODE;
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.link_create = link;
    let link = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(|e| {
        io::Error::other(format!(
            "attach {} to {iface} (driver mode): {e}",
            program.name
        ))
    })?;
    Ok(Attached {
        _link: link,
        _program: loaded,
    })
}

fn load(program: &Program) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    // SAFETY: bpf_attr is plain integers; zeros are their defaults.
    let mut load: bpf_attr__bindgen_ty_4 = unsafe { std::mem::zeroed() };
    load.prog_type = BPF_PROG_TYPE_XDP as u32;
    load.expected_attach_type = BPF_XDP as u32;
    load.insn_cnt = program.insns.len() as u32;
    load.insns = program.insns.as_ptr() as u64;
    load.license = license.as_ptr() as u64;
    load.log_level = 1;
    load.log_buf = log.as_mut_ptr() as u64;
    load.log_size = log.len() as u32;
    for (to, from) in load.prog_name.iter_mut().zip(program.name.bytes().take(15)) {
        *to = from as libc::c_char;
    }
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_3 = load;
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        io::Error::other(format!(
            "load {}: {e}; verifier: {}",
            program.name,
            String::from_utf8_lossy(&log[..end]).trim()
        ))
    })
}

/// The bpf(2) system call, for a command that returns a new file descriptor.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed, and every
    // pointer in it outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
