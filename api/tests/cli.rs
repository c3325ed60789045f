//! `--help` and `--version` answer without any FLOQ_* configuration.

use std::process::Command;

fn run(arg: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_floq-api"))
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
    assert_eq!(stdout.trim(), concat!("floq-api ", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_needs_no_configuration() {
    let (ok, stdout, stderr) = run("--help");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Usage: floq-api"), "{stdout}");
    assert!(!stderr.contains("configuration error"), "{stderr}");
}

#[test]
fn operator_commands_are_listed_in_admin_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_floq-api"))
        .args(["admin", "--help"])
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["bootstrap", "issue-key", "set-password"] {
        assert!(help.contains(command), "{help}");
    }
}
