//! `--help` and `--version` answer without any FLOQ_* configuration.

use std::process::Command;

fn run(arg: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_floq-scheduler"))
        .arg(arg)
        .env_clear()
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_needs_no_configuration() {
    let (ok, stdout, stderr) = run("--version");
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), concat!("floq-scheduler ", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_needs_no_configuration() {
    let (ok, stdout, stderr) = run("--help");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Usage: floq-scheduler"), "{stdout}");
    assert!(!stderr.contains("configuration error"), "{stderr}");
}
