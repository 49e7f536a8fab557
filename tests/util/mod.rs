//! Test harness: where the shared goldens live, and a counting allocator that proves the
//! hot path does not allocate.

#![allow(dead_code)]

pub mod alloc;

use std::path::PathBuf;

/// `../shared` beside the checkout (CI clones the repository next to it).
pub fn shared_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(dir.is_dir(), "{} is missing: the goldens live there", dir.display());
    dir
}

/// A golden file under `../shared/golden/`.
pub fn golden(rel: &str) -> PathBuf {
    shared_dir().join("golden").join(rel)
}

/// The media fixtures, generated once per test run by `tests/fixtures/make.sh` into
/// `target/tmp/test-fixtures` (the script skips the work when its outputs are current and
/// writes atomically, so parallel test processes may all call it).
pub fn fixtures_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-fixtures");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("running tests/fixtures/make.sh (needs bash and gst-launch-1.0)");
        assert!(
            out.status.success(),
            "tests/fixtures/make.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .clone()
}
