//! Invalid configuration stops the binary at start with one clear line and exit code 2.

use std::process::Command;

fn run_with(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kivihook"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run kivihook");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_environment_setting_exits_2_naming_it() {
    let (code, stderr) = run_with(&[("KIVIHOOK_PREFETCH", "lots")], &["all"]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("KIVIHOOK_PREFETCH"), "{stderr}");
}

#[test]
fn invalid_flag_exits_2_naming_it() {
    let (code, stderr) = run_with(&[], &["dispatcher", "--delivery-timeout=-3"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--delivery-timeout"), "{stderr}");
}

#[test]
fn invalid_amqp_url_exits_2_naming_it() {
    let (code, stderr) = run_with(&[("KIVIHOOK_AMQP_URL", "http://localhost")], &["ingest"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("KIVIHOOK_AMQP_URL"), "{stderr}");
}

#[test]
fn a_cluster_list_with_an_entry_that_is_not_amqp_exits_2_naming_it() {
    let list = "amqp://guest:guest@127.0.0.1:5672/%2f,redis://127.0.0.1:6379";
    let (code, stderr) = run_with(&[("KIVIHOOK_AMQP_URL", list)], &["dispatcher"]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("KIVIHOOK_AMQP_URL") && stderr.contains("entry 2 of 2"),
        "{stderr}"
    );
}

#[test]
fn unreadable_config_file_exits_2_naming_it() {
    let (code, stderr) = run_with(&[], &["ingest", "--config", "/nonexistent/kivihook.toml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn a_missing_secret_key_stops_every_role_but_dev() {
    for role in ["all", "ingest", "dispatcher", "scheduler"] {
        let (code, stderr) = run_with(&[], &[role]);
        assert_eq!(code, Some(2), "{role}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("KIVIHOOK_SECRET_KEY"), "{stderr}");
    }
    let (code, stderr) = run_with(&[("KIVIHOOK_SECRET_KEY", "c2hvcnQ=")], &["all"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("KIVIHOOK_SECRET_KEY") && stderr.contains("32 bytes"),
        "{stderr}"
    );
}

#[test]
fn an_outbound_proxy_that_is_not_an_http_url_exits_2_naming_it() {
    for bad in ["socks5://10.0.0.1:1080", "not a url"] {
        let (code, stderr) = run_with(&[("KIVIHOOK_OUTBOUND_PROXY", bad)], &["all"]);
        assert_eq!(code, Some(2), "{bad}");
        assert!(stderr.contains("KIVIHOOK_OUTBOUND_PROXY"), "{stderr}");
    }
}

const KEY: &str = "dGVzdC1rZXktZm9yLXNlYWxpbmctc2VjcmV0cy0zMmI=";

#[test]
fn a_redis_cluster_list_that_cannot_be_parsed_exits_2_naming_it() {
    for list in [
        "redis://127.0.0.1:7000,http://127.0.0.1:7001",
        " , ",
        "redis://[::1",
    ] {
        let (code, stderr) = run_with(
            &[
                ("KIVIHOOK_REDIS_CLUSTER", list),
                ("KIVIHOOK_SECRET_KEY", KEY),
            ],
            &["dispatcher"],
        );
        assert_eq!(code, Some(2), "{list}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("KIVIHOOK_REDIS_CLUSTER"), "{stderr}");
    }
}

#[test]
fn a_redis_cluster_that_cannot_be_reached_exits_2_naming_it() {
    let started = std::time::Instant::now();
    let (code, stderr) = run_with(
        &[
            (
                "KIVIHOOK_REDIS_CLUSTER",
                "redis://127.0.0.1:1,redis://127.0.0.1:2",
            ),
            ("KIVIHOOK_SECRET_KEY", KEY),
            ("KIVIHOOK_BIND", "127.0.0.1:0"),
        ],
        &["dispatcher"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("KIVIHOOK_REDIS_CLUSTER") && stderr.contains("answered"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn an_admin_token_equal_to_the_ingest_token_exits_2() {
    let token = "same-token-for-both-0123456789";
    let (code, stderr) = run_with(
        &[
            ("KIVIHOOK_ADMIN_TOKEN", token),
            ("KIVIHOOK_INGEST_TOKEN", token),
        ],
        &["ingest"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("KIVIHOOK_ADMIN_TOKEN") && stderr.contains("ingest token"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(token),
        "the token is not printed: {stderr}"
    );
}
