use std::process::Command;

fn berth(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run berth")
}

#[test]
fn config_check_accepts_valid_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\naddr = \"127.0.0.1:5999\"\n").unwrap();
    let out = berth(
        &["config", "check", "--config", good.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("127.0.0.1:5999"), "{shown}");

    let out = berth(
        &["config", "check", "--config", good.to_str().unwrap()],
        &[("BERTH_SERVER_ADDR", "127.0.0.1:6001")],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:6001"),
        "env wins over the file"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\nrootdir = \"/x\"\n").unwrap();
    let out = berth(&["config", "check", "--config", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rootdir"), "{err}");
}

#[test]
fn version() {
    let out = berth(&["--version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("berth 0."), "{text}");
    assert!(
        text.contains("(git "),
        "the git revision is part of the version: {text}"
    );
}
