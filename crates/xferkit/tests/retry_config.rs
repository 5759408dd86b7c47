//! The `[retry]` table: defaults, values from file and environment, and
//! errors that name the key.

#![allow(clippy::unwrap_used, clippy::result_large_err)] // test helpers panic on failure; figment::Jail fixes the error type

use std::time::Duration;

use figment::Jail;
use xferkit::config::{Settings, figment_for};
use xferkit::{ErrorKind, RetryPolicy};

fn isolate(jail: &mut Jail) {
    let dir = jail.directory().to_path_buf();
    jail.set_env("XDG_DATA_HOME", dir.join("data").display());
    jail.set_env("XDG_CONFIG_HOME", dir.join("cfg").display());
    jail.set_env("HOME", dir.display());
}

fn settings(jail: &Jail, toml: &str) -> Result<Settings, xferkit::Error> {
    let path = jail.directory().join("x.toml");
    std::fs::write(&path, toml).unwrap();
    Settings::from_figment(&figment_for(Some(&path))?)
}

#[test]
fn absent_table_gives_the_default_policy() {
    Jail::expect_with(|jail| {
        isolate(jail);
        let s = settings(jail, "").unwrap();
        assert_eq!(s.retry.policy(), RetryPolicy::default());
        Ok(())
    });
}

#[test]
fn values_come_from_the_file_and_the_environment() {
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.set_env("XFERKIT_RETRY__MAX_ATTEMPTS", "9");
        let s = settings(
            jail,
            r#"
            [retry]
            max_attempts = 3
            initial_backoff = "50ms"
            max_backoff = "2s"
            max_elapsed = "1m 30s"
            attempt_timeout = "45s"
            "#,
        )
        .unwrap();
        let p = s.retry.policy();
        assert_eq!(p.max_attempts, 9, "environment overrides the file");
        assert_eq!(p.initial_backoff, Duration::from_millis(50));
        assert_eq!(p.max_backoff, Duration::from_secs(2));
        assert_eq!(p.max_elapsed, Duration::from_secs(90));
        assert_eq!(p.attempt_timeout, Duration::from_secs(45));
        Ok(())
    });
}

#[test]
fn unknown_keys_and_bad_values_are_errors_naming_the_key() {
    Jail::expect_with(|jail| {
        isolate(jail);
        let e = settings(jail, "[retry]\nmax_attempt = 3\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("max_attempt"), "{e}");

        let e = settings(jail, "[retry]\ninitial_backoff = \"soon\"\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        let msg = e.to_string();
        assert!(
            msg.contains("initial_backoff") && msg.contains("soon"),
            "{msg}"
        );

        let e = settings(jail, "[retry]\nmax_backoff = 10\n").unwrap_err();
        assert!(e.to_string().contains("max_backoff"), "{e}");

        let e = settings(jail, "[retry]\nmax_attempts = 0\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("retry.max_attempts") && msg.contains("x.toml"),
            "{msg}"
        );
        Ok(())
    });
}

#[test]
fn state_dir_is_a_known_key_with_a_default() {
    Jail::expect_with(|jail| {
        isolate(jail);
        let s = settings(jail, "").unwrap();
        assert_eq!(s.state_dir, None);
        assert!(xferkit::config::default_state_dir().ends_with("xferkit"));
        let s = settings(jail, "state_dir = \"journals\"\n").unwrap();
        assert_eq!(s.state_dir, Some(std::path::PathBuf::from("journals")));
        Ok(())
    });
}
