//! README "Installation": the PostgreSQL `[dependencies]` lines, exactly as
//! printed, build a fresh crate whose `src/main.rs` is `examples/postgres.rs`
//! (the API tour against PostgreSQL), and that program runs against
//! `DATABASE_URL` (default the local server's `test` database).
//!
//! The crate lives in a scratch directory; `outbox` and `outbox-derive` are
//! patched to this checkout (`[patch.crates-io]`, which works for a crate
//! crates.io does not have, and wins over a newer compatible version it
//! does have), the workspace's `Cargo.lock` is copied in so every version
//! matches, and it builds into the workspace's own target directory, so the
//! dependencies compiled once are reused from one run to the next.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// The README line before the PostgreSQL installation block.
const MARKER: &str = "<!-- install:postgres -->";
const CRATE: &str = "outbox-install-check";

/// The workspace root (this package's manifest directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The TOML code block that follows [`MARKER`] in `readme`.
fn install_block(readme: &str) -> String {
    let after = readme
        .split_once(MARKER)
        .unwrap_or_else(|| panic!("README.md has no {MARKER} line"))
        .1;
    let mut lines = after.lines().skip_while(|line| line.trim().is_empty());
    assert_eq!(
        lines.next().map(str::trim),
        Some("```toml"),
        "{MARKER} must be followed by a ```toml block"
    );
    let block: Vec<&str> = lines.take_while(|line| line.trim() != "```").collect();
    block.join("\n")
}

/// A TOML basic string holding `path`.
fn toml_path(path: &Path) -> String {
    let path = path.to_str().expect("the checkout's path is UTF-8");
    format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `[[package]]` entry of `name` in a `Cargo.lock`.
fn lock_entry<'a>(lock: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("name = \"{name}\"");
    lock.split("[[package]]")
        .filter(|entry| entry.lines().any(|line| line == header))
        .collect()
}

fn cargo_build(cargo: &Path, dir: &Path, target_dir: &Path, offline: bool) -> Output {
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--bin")
        .arg(CRATE)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_TERM_COLOR", "never");
    if offline {
        command.arg("--offline");
    }
    command.output().expect("cargo runs")
}

#[test]
fn readme_postgres_install_lines_build_and_run_the_postgres_example() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = install_block(&readme);
    for expected in [
        "[dependencies]",
        "outbox = { version = \"0.1\", features = [\"postgres\"] }",
        "sqlx = { version = \"0.9\", features = [\"runtime-tokio\", \"postgres\"] }",
    ] {
        assert!(
            block.lines().any(|line| line.trim() == expected),
            "{expected:?} missing from the README's PostgreSQL block:\n{block}"
        );
    }

    // target/tmp's parent is the workspace's target directory.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let target_dir = tmp.parent().unwrap().to_path_buf();
    let dir = tmp.join(format!("install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        "[package]\n\
         name = \"{CRATE}\"\n\
         version = \"0.0.0\"\n\
         edition = \"2024\"\n\
         publish = false\n\
         \n\
         # Its own workspace, not a member of the checkout's.\n\
         [workspace]\n\
         \n\
         {block}\n\
         \n\
         [patch.crates-io]\n\
         outbox = {{ path = {} }}\n\
         outbox-derive = {{ path = {} }}\n",
        toml_path(&root.join("outbox")),
        toml_path(&root.join("outbox-derive")),
    );
    std::fs::write(dir.join("Cargo.toml"), &manifest).unwrap();
    let mut main = std::fs::read_to_string(root.join("examples/postgres.rs")).unwrap();
    // README: `outbox::sqlx` is the service's own sqlx (one type).
    main.push_str(
        "\n// Appended by tests/install.rs: `outbox::sqlx` is the `sqlx` the README names.\n\
         const _: fn(sqlx::PgPool) -> outbox::sqlx::PgPool = |pool| pool;\n",
    );
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let started = Instant::now();
    let mut build = cargo_build(&cargo, &dir, &target_dir, true);
    let mut mode = "--offline";
    if !build.status.success() && String::from_utf8_lossy(&build.stderr).contains("offline") {
        // Something the copied lock needs is not in the local registry cache.
        build = cargo_build(&cargo, &dir, &target_dir, false);
        mode = "online";
    }
    let built_in = started.elapsed();
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert!(
        build.status.success(),
        "cargo build ({mode}) of the README's lines failed:\n{manifest}\n{stderr}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");

    // The build used this checkout, not a published `outbox`, and one sqlx.
    let lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
    assert!(!lock.contains("[[patch.unused]]"), "{lock}");
    for name in ["outbox", "outbox-derive"] {
        let entries = lock_entry(&lock, name);
        assert_eq!(entries.len(), 1, "{name}: {entries:?}");
        assert!(
            !entries[0].contains("source ="),
            "{name} came from a registry, not the checkout: {}",
            entries[0]
        );
    }
    let sqlx = lock_entry(&lock, "sqlx");
    assert_eq!(sqlx.len(), 1, "more than one sqlx: {sqlx:?}");
    assert!(sqlx[0].contains("version = \"0.9."), "{}", sqlx[0]);

    let binary = target_dir
        .join("debug")
        .join(format!("{CRATE}{}", std::env::consts::EXE_SUFFIX));
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let started = Instant::now();
    let run = Command::new(&binary)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let ran_in = started.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{stdout}\n{}",
        binary.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("published 3, retried 1"), "{stdout}");
    println!(
        "built ({mode}) in {:.1} s, ran in {:.1} s",
        built_in.as_secs_f64(),
        ran_in.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
