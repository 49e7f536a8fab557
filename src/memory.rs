//! Giving freed heap back to the system after start-up.
//!
//! Loading the models decodes ~170 MB of ONNX protobuf into tensors and then packs them for
//! tract's kernels; the decoding buffers are freed, but glibc keeps freed pages of its main
//! heap unless asked. Measured on `serve` with the default models: 287 MB resident without a
//! trim, about 60 MB less with one (see the README's daemon figures).

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
