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

/// `berth migrate` refuses what it cannot do with a message that says why, and creates
/// nothing: no arguments, a blob target that is the registry's own storage, a target file
/// with a bad key, `--to sqlite` without a PostgreSQL source.
#[test]
fn migrate_refuses_bad_targets_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let refused = |args: &[&str], needle: &str| {
        let out = berth(&[&["migrate", "--data", data][..], args].concat(), &[]);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    refused(&[], "say what to move");
    let same = dir.path().join("same.toml");
    std::fs::write(&same, format!("[storage]\nroot = \"{data}\"\n")).unwrap();
    refused(
        &["--blobs-to", same.to_str().unwrap()],
        "the storage the registry already uses",
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\ndriver = \"s3\"\n").unwrap();
    refused(&["--blobs-to", bad.to_str().unwrap()], "storage.s3.bucket");
    refused(&["--to", "sqlite"], "copies from PostgreSQL");
    refused(&["--to", "mysql://x"], "postgres://");
    assert!(
        !std::path::Path::new(data).join("docker").exists()
            && !std::path::Path::new(data)
                .join("berth/metadata.sqlite")
                .exists(),
        "nothing written"
    );
}
