//! The binary's contract: bad configuration exits 2 with one line naming the
//! variable; `--check-config` prints the effective values, secrets masked.

use std::path::Path;
use std::process::{Command, Output};

fn pgmux(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgmux"))
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run pgmux")
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn a_bad_contract_value_exits_2_naming_the_variable() {
    let out = pgmux(
        repo_root(),
        &[("DB_CONN_MAX_AGE", "abc")],
        &["--check-config"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("DB_CONN_MAX_AGE") && stderr.contains("whole number of seconds"),
        "{stderr}"
    );
    let out = pgmux(repo_root(), &[("PGMUX_POOL_SIZE", "many")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGMUX_POOL_SIZE"));
}

#[test]
fn production_profile_with_the_repo_proxy_toml_and_masked_secrets() {
    let out = pgmux(
        repo_root(),
        &[
            ("DJANGO_ENV", "production"),
            ("DB_USER", "bt"),
            ("DB_PASSWORD", "hunter2"),
        ],
        &["--check-config"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server_lifetime = 600.0"), "{text}");
    assert!(text.contains("server_connect_timeout = 30.0"), "{text}");
    assert!(text.contains("[users.bt]"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password must be masked: {text}"
    );
    let out = pgmux(repo_root(), &[], &["--check-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("server_lifetime = 300.0") && text.contains("server_connect_timeout = 10.0"),
        "{text}"
    );
    assert!(
        text.contains("listen_addr = \"127.0.0.1:6432\"") && text.contains("server_port = 5432"),
        "{text}"
    );
}
