#!/usr/bin/env python3
"""Where a data-plane program spends its time, instruction by instruction.

Runs a command (a benchmark) under `perf record -a` and, while it runs,
saves the JIT image of every loaded BPF program whose name matches
`--prog` (BPF_OBJ_GET_INFO_BY_FD), with its line info (the source line of
each stretch of JIT code, from the program's BTF). Then it maps the
samples that fell in those programs onto their source lines and their x86
code (objdump) and prints the hottest lines, the hottest instructions with
their neighbours, and the share of each stretch of code.

    python3 tests/bench/profile.py --prog lb_plain -- \
        cargo xtask bench --quick -- --section packet

Needs root, perf and binutils' objdump. Without a hardware PMU (a VM) perf
samples on a timer: a sample lands a few instructions after the one that
waited, so read stretches, not single instructions. docs/bench.md
("Profiling") says how to read the output.
"""

import argparse
import bisect
import collections
import ctypes
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

SYS_BPF = 321  # x86-64
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
INFO_SIZE = 256  # enough for the fields read here (struct bpf_prog_info)
BTF_INFO_SIZE = 32  # struct bpf_btf_info

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    return libc.syscall(SYS_BPF, cmd, buf, 128), buf


def get_info(fd, size, fields):
    """The info of the object `fd` (BPF_OBJ_GET_INFO_BY_FD) into a buffer of
    `size` bytes with `fields` ({offset: (format, value)}) set first."""
    info = ctypes.create_string_buffer(size)
    for offset, (fmt, value) in fields.items():
        struct.pack_into(fmt, info, offset, value)
    r, _ = bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, size, ctypes.addressof(info)))
    return info.raw if r >= 0 else None


def prog_info(fd, jited=None):
    """(name, tag, jited length) of the program, its JIT image into `jited`."""
    fields = {}
    if jited is not None:
        fields = {16: ("<I", len(jited)), 24: ("<Q", ctypes.addressof(jited))}
    info = get_info(fd, INFO_SIZE, fields)
    if info is None:
        return None
    name = info[64:80].split(b"\0")[0].decode()
    return name, info[8:16].hex(), struct.unpack_from("<I", info, 16)[0]


def btf_strings(btf_id):
    """The string section of BTF object `btf_id`."""
    fd, _ = bpf(BPF_BTF_GET_FD_BY_ID, struct.pack("<III", btf_id, 0, 0))
    if fd < 0:
        return b""
    try:
        head = get_info(fd, BTF_INFO_SIZE, {})
        if head is None:
            return b""
        data = ctypes.create_string_buffer(struct.unpack_from("<I", head, 8)[0])
        if get_info(fd, BTF_INFO_SIZE, {0: ("<Q", ctypes.addressof(data)), 8: ("<I", len(data))}) is None:
            return b""
        # struct btf_header: magic, version, flags, hdr_len, type_off,
        # type_len, str_off, str_len.
        hdr_len, _, _, str_off, str_len = struct.unpack_from("<IIIII", data.raw, 4)
        start = hdr_len + str_off
        return data.raw[start:start + str_len]
    finally:
        os.close(fd)


def line_table(fd, length):
    """[(JIT offset, "file:line", source text)] of the program's line info,
    sorted by offset (offsets of its main function's image only)."""
    head = get_info(fd, INFO_SIZE, {})
    if head is None:
        return []
    nr_ksyms, btf_id = struct.unpack_from("<I", head, 104)[0], struct.unpack_from("<I", head, 128)[0]
    nr_lines, nr_jited = struct.unpack_from("<I", head, 148)[0], struct.unpack_from("<I", head, 168)[0]
    rec_size = struct.unpack_from("<I", head, 172)[0]
    if not (nr_ksyms and btf_id and nr_lines and nr_jited == nr_lines and rec_size >= 16):
        return []
    ksyms = (ctypes.c_uint64 * nr_ksyms)()
    lines = ctypes.create_string_buffer(nr_lines * rec_size)
    jited = (ctypes.c_uint64 * nr_jited)()
    info = get_info(fd, INFO_SIZE, {
        104: ("<I", nr_ksyms), 112: ("<Q", ctypes.addressof(ksyms)),
        148: ("<I", nr_lines), 152: ("<Q", ctypes.addressof(lines)),
        160: ("<Q", ctypes.addressof(jited)), 168: ("<I", nr_jited),
        172: ("<I", rec_size), 176: ("<I", 8),
    })
    if info is None:
        return []
    strings = btf_strings(btf_id)

    def string(offset):
        return strings[offset:strings.find(b"\0", offset)].decode(errors="replace")

    table = []
    for i in range(nr_lines):
        # struct bpf_line_info: insn_off, file_name_off, line_off, line_col.
        _, file_off, text_off, line_col = struct.unpack_from("<IIII", lines.raw, i * rec_size)
        offset = jited[i] - ksyms[0]
        if 0 <= offset < length:
            path = "/".join(string(file_off).split("/")[-2:])
            table.append((offset, f"{path}:{line_col >> 10}", string(text_off).strip()))
    return sorted(table)


def dump_images(pattern, out, stop):
    """Saves the JIT images of matching programs until `stop` is set."""
    seen = set()
    while not stop.is_set():
        prog_id = 0
        while True:
            r, buf = bpf(BPF_PROG_GET_NEXT_ID, struct.pack("<III", prog_id, 0, 0))
            if r < 0:
                break
            prog_id = struct.unpack_from("<I", buf, 4)[0]
            if prog_id in seen:
                continue
            fd, _ = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))
            if fd < 0:
                continue
            try:
                head = prog_info(fd)
                if head and pattern.search(head[0]) and head[2]:
                    image = ctypes.create_string_buffer(head[2])
                    if prog_info(fd, image):
                        path = os.path.join(out, f"bpf_prog_{head[1]}_{head[0]}.bin")
                        with open(path, "wb") as f:
                            f.write(image.raw)
                        with open(path[:-4] + ".lines.json", "w") as f:
                            json.dump(line_table(fd, head[2]), f)
                        seen.add(prog_id)
            finally:
                os.close(fd)
        time.sleep(0.05)


def disassemble(image):
    out = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-mi386:x86-64", image],
        check=True, capture_output=True, text=True,
    ).stdout
    lines = []
    for line in out.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\t(?:[0-9a-f]{2} )+\s*\t(.*)", line)
        if m:
            lines.append((int(m.group(1), 16), m.group(2).strip()))
    return lines


def samples(perf_data):
    """Sample counts by (symbol, offset) for BPF programs."""
    out = subprocess.run(
        ["perf", "script", "-i", perf_data, "-F", "ip,sym,symoff"],
        capture_output=True, text=True,
    ).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        sym = line.split()[-1] if line.split() else ""
        if sym.startswith("bpf_prog_") and "+0x" in sym:
            name, off = sym.split("+0x")
            counts[(name, int(off, 16))] += 1
    return counts


def by_source_line(mine, table, total, top):
    """The samples of `mine` ({offset: count}) by the source line whose code
    holds them (`table`, [`line_table`])."""
    if not table:
        print("\n(no line info: the program has no BTF)")
        return
    starts = [row[0] for row in table]
    lines = collections.Counter()
    for off, n in mine.items():
        i = bisect.bisect_right(starts, off) - 1
        lines[tuple(table[i][1:]) if i >= 0 else ("?", "")] += n
    print(f"\nhottest {top} source lines (share, cumulative):")
    acc = 0
    for (where, text), n in lines.most_common(top):
        acc += n
        print(f"  {100 * n / total:5.1f} % {100 * acc / total:5.1f} %  {where:40s} {text[:80]}")


def report(symbol, lines, table, counts, top, stretch):
    mine = {off: n for (s, off), n in counts.items() if s == symbol}
    total = sum(mine.values())
    print(f"\n## {symbol}: {total} samples, {len(lines)} instructions")
    if not total:
        return
    by_source_line(mine, table, total, top)
    print(f"\nby stretch of {stretch:#x} bytes (>= 1 %):")
    bins = collections.Counter()
    for off, n in mine.items():
        bins[off // stretch] += n
    for b in sorted(bins):
        if bins[b] * 100 >= total:
            print(f"  {b * stretch:6x}-{(b + 1) * stretch:6x} {bins[b]:7d} {100 * bins[b] / total:5.1f} %")
    print(f"\nhottest {top} instructions, with the two before each:")
    index = {off: i for i, (off, _) in enumerate(lines)}
    for off, n in sorted(mine.items(), key=lambda kv: -kv[1])[:top]:
        i = index.get(off)
        if i is None:
            continue
        for j in range(max(0, i - 2), i + 1):
            o, text = lines[j]
            mark = f"{mine.get(o, 0):7d}" if j == i else "       "
            print(f"  {mark} {o:6x}  {text}")
        print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prog", required=True, help="regex of the program names to profile")
    ap.add_argument("--top", type=int, default=25, help="hottest instructions to show")
    ap.add_argument("--stretch", type=lambda s: int(s, 0), default=0x200)
    ap.add_argument("--freq", default="25000", help="perf sampling frequency (Hz)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("a command to run is needed (after --)")
    work = tempfile.mkdtemp(prefix="lb-profile-")
    perf_data = os.path.join(work, "perf.data")
    stop = threading.Event()
    dumper = threading.Thread(target=dump_images, args=(re.compile(args.prog), work, stop))
    dumper.start()
    perf = subprocess.Popen(
        ["perf", "record", "-a", "-F", args.freq, "-o", perf_data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        status = subprocess.run(command).returncode
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait()
        stop.set()
        dumper.join()
    counts = samples(perf_data)
    images = sorted(f for f in os.listdir(work) if f.endswith(".bin"))
    if not images:
        print(f"no program matching {args.prog!r} was loaded while the command ran")
    for image in images:
        path = os.path.join(work, image)
        with open(path[:-4] + ".lines.json") as f:
            table = [tuple(row) for row in json.load(f)]
        report(image[:-4], disassemble(path), table, counts, args.top, args.stretch)
    print(f"\nfiles: {work}")
    sys.exit(status)


if __name__ == "__main__":
    main()
