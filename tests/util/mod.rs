//! Test harness: where the shared goldens live, and a counting allocator that proves the
//! hot path does not allocate.

#![allow(dead_code)]

pub mod alloc;

use std::path::PathBuf;

/// `../shared` beside the checkout (CI clones the repository next to it).
pub fn shared_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        dir.is_dir(),
        "{} is missing: the goldens live there",
        dir.display()
    );
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
        let out = host_command("bash")
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

/// The built model directory (`bash models/build.sh` writes it; CI runs that first):
/// `$TSPM_MODEL_DIR`, else `~/.cache/tspm-edge/models`.
pub fn model_dir() -> PathBuf {
    let dir = match std::env::var_os("TSPM_MODEL_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/tspm-edge/models"),
    };
    assert!(
        dir.join("manifest.toml").is_file(),
        "{} has no manifest.toml: build the models first with `bash models/build.sh`",
        dir.display()
    );
    dir
}

/// A host program (bash, python3, gst-launch-1.0). Under qemu-user (`cross/test.sh`) the
/// runner sets variables for the guest's loader and GStreamer and lists their names in
/// TSPM_GUEST_ENV (`cross/qemu-run.sh`): a host program must not see them (host GStreamer would
/// load the guest's plugins, and rewrite its registry).
pub fn host_command(program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    if let Some(names) = std::env::var_os("TSPM_GUEST_ENV") {
        for name in names.to_string_lossy().split_whitespace() {
            cmd.env_remove(name);
        }
        cmd.env_remove("TSPM_GUEST_ENV");
    }
    cmd
}

/// Whether the tests run under qemu-user (`cross/test.sh`), where everything is 10-50x slower
/// than on the board: assertions about real-time behaviour do not hold there.
pub fn emulated() -> bool {
    std::env::var_os("TSPM_GUEST_ENV").is_some()
}

/// The built binary.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tspm-edge"))
}

/// A config file in `dir` pointing `models.dir` at `models`, plus extra TOML.
pub fn write_config(dir: &std::path::Path, models: &std::path::Path, extra: &str) -> PathBuf {
    let path = dir.join("tspm-edge.toml");
    let text = format!(
        "[models]\ndir = {:?}\n{extra}",
        models.display().to_string()
    );
    std::fs::write(&path, text).expect("writing a test config");
    path
}
