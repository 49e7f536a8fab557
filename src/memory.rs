//! Keeping `serve`'s resident memory to what it uses: fewer malloc arenas, and giving memory
//! that only start-up used back to the system (freed heap, and the pages of code that only
//! loading the models ran).
//!
//! The `tspm-edge` binary allocates through jemalloc (src/main.rs), which gives freed pages
//! back by itself; the glibc knobs here cover what still goes through glibc malloc: the C
//! libraries (GStreamer, GLib), and any program built without the `jemalloc` feature.
//!
//! Loading the models decodes ~170 MB of ONNX protobuf into tensors and then packs them for
//! tract's kernels; the decoding buffers are freed, but glibc keeps freed pages of its main
//! heap unless asked. Measured on `serve` with the default models under glibc: 287 MB
//! resident without a trim, about 60 MB less with one.

/// glibc malloc arenas `serve` allows (unless `MALLOC_ARENA_MAX` is set): by default glibc
/// gives each of up to 8 × cores threads its own arena, and the daemon's threads (engine,
/// encoder, API connections, GStreamer's streaming threads) each keep freed memory in theirs.
/// Measured with `soak --realtime-s 20 --segments 120` (debug build, everything on glibc):
/// default 143.8 MB in the real-time phase / 136.2 MB accelerated; 2 arenas 128.7 / 128.6 MB,
/// same ask latency.
pub const SERVE_MALLOC_ARENAS: i32 = 2;

/// Caps the number of glibc malloc arenas at `arenas`, unless the environment already sets
/// `MALLOC_ARENA_MAX` (glibc reads that itself). Call before starting threads; a no-op
/// outside glibc. Returns whether the cap was set here.
pub fn limit_arenas(arenas: i32) -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers; it sets a parameter of glibc's allocator under its
    // lock and may be called at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = arenas;
        false
    }
}

/// Bytes the program holds allocated on the heap right now (jemalloc's `stats.allocated`,
/// refreshed here): unlike the resident set, it does not move with the pages an allocator
/// keeps or returns, so a leak shows in it within a few segments. `None` without the
/// `jemalloc` feature, or where jemalloc is linked but is not the global allocator (a
/// library test: it then counts nothing).
pub fn heap_allocated() -> Option<u64> {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        let bytes = stats::allocated::read().ok()?;
        (bytes > 0).then_some(bytes as u64)
    }
    #[cfg(not(feature = "jemalloc"))]
    None
}

/// Returns free heap pages to the kernel (glibc `malloc_trim(0)`); a no-op elsewhere.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own allocator state under
    // its locks; it is safe to call at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the kernel to reclaim the pages of the read-only file mappings (the program's and
/// its libraries' code and constants) that start-up faulted in: loading and planning the
/// models runs code (ONNX parsing, tract's optimiser) that a running daemon never runs again,
/// about 15 MB of `serve`'s resident set. The kernel would reclaim these clean pages under
/// pressure anyway; doing it once after start-up makes the resident set the working set,
/// and the code the daemon does run faults back in on first use. Returns the bytes advised
/// (Linux 5.4+ `MADV_PAGEOUT`; elsewhere, or on an older kernel, nothing happens).
pub fn release_startup_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        maps.lines()
            .filter_map(read_only_file_mapping)
            .map(|(start, len)| {
                // SAFETY: the range is one of this process's own mappings as the kernel lists
                // it; MADV_PAGEOUT only drops clean pages, which fault back in unchanged.
                #[allow(unsafe_code)]
                let advised =
                    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
                if advised == 0 { len } else { 0 }
            })
            .sum()
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// `(start, length)` of a `/proc/self/maps` line that maps a file without write permission.
#[cfg(target_os = "linux")]
fn read_only_file_mapping(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3)?;
    if !path.starts_with('/') || !perms.starts_with('r') || perms.contains('w') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end.checked_sub(start)?))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn read_only_file_mappings_are_picked_from_the_maps_lines() {
        // 32-bit addresses: the same lines parse on armv7.
        let code = "b6a00000-b6b00000 r-xp 00001000 fe:00 1234    /usr/bin/tspm-edge";
        assert_eq!(read_only_file_mapping(code), Some((0xb6a0_0000, 0x10_0000)));
        let data = "b6b00000-b6b10000 rw-p 00101000 fe:00 1234    /usr/bin/tspm-edge";
        assert_eq!(read_only_file_mapping(data), None);
        let heap = "b7000000-b8000000 rw-p 00000000 00:00 0       [heap]";
        assert_eq!(read_only_file_mapping(heap), None);
        let anon = "bf000000-bf100000 r--p 00000000 00:00 0";
        assert_eq!(read_only_file_mapping(anon), None);
    }

    #[test]
    fn startup_pages_are_released_and_the_program_runs_on() {
        // This test binary maps itself and libc read-only; advising them must succeed, and
        // the code runs on (it faults back in).
        assert!(release_startup_pages() > 0);
        assert!(release_startup_pages() > 0);
    }
}
