//! The README's shell examples, run as printed against a real stack, so that
//! they cannot rot: every ```sh block outside the sections that are commands
//! of their own (Quick start, Benchmark), in order, in one bash with
//! `set -euo pipefail`, reading only `$FLOQ_API` and `$FLOQ_KEY`.

use floq_tests::TestApp;

/// Sections whose shell blocks start the stack or the tests themselves.
const NOT_EXAMPLES: [&str; 2] = ["Quick start", "Benchmark"];

fn example_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut section = "";
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match current.as_mut() {
            Some(block) if line.trim_start().starts_with("```") => {
                if !NOT_EXAMPLES.contains(&section) {
                    blocks.push(std::mem::take(block));
                }
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None if line.trim_start().starts_with("```sh") => current = Some(String::new()),
            None => {
                if let Some(heading) = line.strip_prefix("## ") {
                    section = heading.trim();
                }
            }
        }
    }
    blocks
}

#[tokio::test]
async fn readme_shell_examples_work_as_printed() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let blocks = example_blocks(&readme);
    assert!(blocks.len() >= 2, "the README's examples were not found: {blocks:?}");
    let app = TestApp::spawn().await;
    let script = format!("set -euo pipefail\n{}", blocks.join("\n"));
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("FLOQ_API", &app.base)
        .env("FLOQ_KEY", &app.admin.api_key)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "README examples failed ({}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // The walkthrough's run and its webhook call both reached the `gold` branch.
    assert!(stdout.contains(r#""status":"succeeded""#), "{stdout}");
    assert!(stdout.matches(r#""tier":"gold""#).count() >= 2, "{stdout}");
    app.teardown().await;
}
