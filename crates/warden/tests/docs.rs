//! The README's examples run as written: every ```sh block marked `<!-- docs-test -->`
//! is run, in order, by bash against a real gateway and the machine's PostgreSQL, with
//! the built `warden` on the PATH, so the documentation cannot drift from the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

mod common;
use common::*;

use std::process::Command;

const MARK: &str = "<!-- docs-test -->";

/// The marked blocks of `markdown`, in order.
fn marked_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARK {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(fence.trim(), "```sh", "a {MARK} must precede a ```sh block");
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

#[test]
fn the_readmes_marked_shell_blocks_run_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    assert!(
        blocks.len() >= 3,
        "the README's first steps are marked for this test; found {}",
        blocks.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway(dir.path());
    let admin = running.printed_key.clone().unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_warden"))
        .parent()
        .unwrap()
        .to_path_buf();
    const DB_PASSWORD: &str = "scram-pw-1";
    let mut outputs = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let out = run(Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(dir.path())
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("HOME", dir.path())
            .env("WARDEN_GATEWAY", &running.url)
            .env("WARDEN_TOKEN", &admin)
            .env("DB_USER", "warden_t_scram")
            .env("DB_PASSWORD", DB_PASSWORD));
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "README block {} failed:\n{block}\n--- output:\n{said}",
            i + 1
        );
        assert!(
            !said.contains(DB_PASSWORD),
            "the backend password was printed:\n{said}"
        );
        outputs.push(said);
    }
    let all = outputs.concat();
    // What the prose around the blocks promises.
    for promised in [
        "connection `billing` would be created",
        "nothing was stored",
        "connection `billing` created",
        "decision: deny (rule safety/no-drops)",
        "allowed_groups",
        "refused by the guardrail",
        "warden_t_scram",
        "API key `ci-deploy`",
    ] {
        assert!(all.contains(promised), "`{promised}` not in:\n{all}");
    }
    stop(running);
}
