//! Bad input through the real `xfer` binary: every case exits non-zero
//! (2 for configuration, URL and key errors, 1 otherwise; see
//! `src/fail.rs`), prints exactly one line on stderr that names the problem
//! (the key and file, the URL, the path), never panics, and loses or leaves
//! nothing: every file in the sandbox (sources, the local store, the working
//! directory) is byte-for-byte as before, and the local store's
//! `.xferkit/tmp` is empty.
//!
//! "Backend not compiled in" cannot happen in this binary (the CLI is built
//! with every backend); the facade's `tests/config.rs`
//! `backend_not_compiled_in_says_which_feature` covers it under
//! `cargo test -p xferkit` (default features: no `s3`).
//!
//! The S3 and Azure cases run against the emulators (`cargo xtask test`);
//! without their variables they pass vacuously with a note, except under
//! `CI` / `XFERKIT_REQUIRE_EMULATORS=1`, where they fail.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use common::{Sandbox, check_failure, emulator, unique};

const BODY: &[u8] = b"the original bytes\n";

/// A local sandbox with `a.txt` in the working directory and uploaded as
/// key `a.txt`; returns the object's URL.
fn with_object() -> (Sandbox, String) {
    let sb = Sandbox::local();
    sb.file("a.txt", BODY);
    let url = sb.ok(&["upload", "a.txt"]).out().to_string();
    (sb, url)
}

fn config_fails(toml: &str, code: i32, needles: &[&str]) {
    let sb = Sandbox::bare().with_config(toml);
    sb.fails_cleanly(&["stores"], code, needles);
}

// ---------------------------------------------------------------- config

#[test]
fn config_malformed_toml() {
    config_fails(
        "default_store = = 1\n[stores.x\n",
        2,
        &["xferkit-test.toml", "TOML", "line 1"],
    );
}

#[test]
fn config_missing_file() {
    let sb = Sandbox::local();
    sb.fails_cleanly(&["--config", "nope.toml", "stores"], 2, &["nope.toml"]);
}

#[test]
fn config_unknown_backend() {
    config_fails(
        "[stores.m]\nbackend = \"ftp\"\n",
        2,
        &["stores.m.backend", "\"ftp\"", "xferkit-test.toml", "s3"],
    );
}

#[test]
fn config_backend_name_is_case_sensitive() {
    config_fails(
        "[stores.m]\nbackend = \"S3\"\nbucket = \"b\"\n",
        2,
        &["stores.m.backend", "\"S3\"", "not a known backend"],
    );
}

#[test]
fn config_backend_missing() {
    config_fails(
        "[stores.m]\nroot = \"x\"\n",
        2,
        &["stores.m.backend", "missing", "xferkit-test.toml"],
    );
}

#[test]
fn config_s3_missing_bucket() {
    config_fails(
        "[stores.m]\nbackend = \"s3\"\nregion = \"eu-west-1\"\n",
        2,
        &["stores.m.bucket", "missing", "xferkit-test.toml"],
    );
}

#[test]
fn config_gcs_missing_bucket() {
    config_fails(
        "[stores.g]\nbackend = \"gcs\"\nanonymous = true\n",
        2,
        &["stores.g.bucket", "missing", "xferkit-test.toml"],
    );
}

#[test]
fn config_azure_missing_container() {
    config_fails(
        "[stores.a]\nbackend = \"azure\"\naccount = \"acct\"\naccount_key = \"a2V5\"\n",
        2,
        &["stores.a.container", "xferkit-test.toml"],
    );
}

#[test]
fn config_wrong_type_top_level() {
    config_fails(
        "concurrency = \"many\"\n",
        2,
        &["concurrency", "\"many\"", "xferkit-test.toml"],
    );
}

#[test]
fn config_wrong_type_in_a_store() {
    let r = Sandbox::bare()
        .with_config("[stores.m]\nbackend = \"s3\"\nbucket = \"b\"\nforce_path_style = \"yes\"\n")
        .fails_cleanly(
            &["stores"],
            2,
            &["stores.m.force_path_style", "boolean", "xferkit-test.toml"],
        );
    // The key as written, not figment's `default.force_path_style.stores.m`.
    assert!(!r.stderr.contains("default."), "{r:?}");
}

#[test]
fn config_wrong_type_from_the_environment() {
    let sb = Sandbox::local().with_env("XFERKIT_CONCURRENCY", "lots");
    sb.fails_cleanly(&["stores"], 2, &["concurrency", "\"lots\"", "XFERKIT_"]);
}

#[test]
fn config_unknown_top_level_key() {
    // docs/config.md: unknown keys are errors, never silently ignored.
    config_fails(
        "colour = \"blue\"\n",
        2,
        &["unknown key `colour`", "xferkit-test.toml", "default_store"],
    );
}

#[test]
fn config_unknown_store_key() {
    config_fails(
        "[stores.m]\nbackend = \"s3\"\nbucket = \"b\"\nbuckt = \"c\"\n",
        2,
        &["stores.m.buckt", "xferkit-test.toml", "bucket"],
    );
}

#[test]
fn config_bad_endpoint() {
    config_fails(
        "[stores.m]\nbackend = \"s3\"\nbucket = \"b\"\nendpoint = \"localhost:9000\"\n",
        2,
        &["stores.m.endpoint", "localhost:9000", "xferkit-test.toml"],
    );
}

#[test]
fn config_default_store_not_configured() {
    config_fails(
        "default_store = \"media\"\n",
        2,
        &["default_store", "\"media\"", "xferkit-test.toml"],
    );
}

// ------------------------------------------------------------------ URLs

#[test]
fn url_not_a_url() {
    let (sb, _) = with_object();
    sb.fails_cleanly(&["stat", "not a url"], 2, &["\"not a url\""]);
}

#[test]
fn url_empty() {
    let (sb, _) = with_object();
    sb.fails_cleanly(&["download", ""], 2, &["invalid URL \"\""]);
}

#[test]
fn url_unsupported_scheme() {
    let (sb, _) = with_object();
    sb.fails_cleanly(&["download", "ftp://host/x"], 2, &["ftp://host/x", "'ftp'"]);
}

#[test]
fn url_missing_bucket() {
    let (sb, _) = with_object();
    sb.fails_cleanly(&["stat", "s3:///key"], 2, &["s3:///key", "missing bucket"]);
}

#[test]
fn url_with_query() {
    let (sb, url) = with_object();
    // Named without its query: a presigned URL given here carries its signature there.
    let u = format!("{url}?X-Amz-Signature=secret-sig");
    let r = sb.fails_cleanly(&["download", &u], 2, &[&format!("{url}?…"), "query"]);
    assert!(!r.stderr.contains("secret-sig"), "{}", r.stderr);
}

#[test]
fn url_with_fragment() {
    let (sb, url) = with_object();
    // Named without its fragment: an encrypted attachment's link keeps its key there.
    let u = format!("{url}#secret-part");
    let r = sb.fails_cleanly(&["stat", &u], 2, &[&format!("{url}#…"), "fragment"]);
    assert!(!r.stderr.contains("secret-part"), "{}", r.stderr);
}

#[test]
fn url_with_credentials_does_not_echo_the_password() {
    let (sb, _) = with_object();
    let r = sb.fails_cleanly(
        &["stat", "s3://user:hunter2-pw@bucket/k"],
        2,
        &["s3://bucket/k", "credentials"],
    );
    assert!(!r.stderr.contains("hunter2-pw"), "{r:?}");
}

#[test]
fn url_store_not_configured() {
    let (sb, _) = with_object();
    sb.fails_cleanly(
        &["download", "s3://nobody-has-this-bucket/k"],
        2,
        &[
            "s3://nobody-has-this-bucket/k",
            "no configured store",
            "local",
        ],
    );
    sb.fails_cleanly(
        &["cp", "a.txt", "gs://other-bucket/k"],
        2,
        &["gs://other-bucket/k", "no configured store"],
    );
}

#[test]
fn url_file_outside_the_store_root() {
    let (sb, _) = with_object();
    sb.fails_cleanly(
        &["download", "file:///etc/passwd"],
        2,
        &["file:///etc/passwd", "no configured store"],
    );
}

#[test]
fn url_names_a_prefix_not_an_object() {
    let (sb, _) = with_object();
    let root = sb.root_url();
    sb.fails_cleanly(&["download", &root], 2, &[&root, "prefix"]);
}

#[test]
fn url_not_utf8() {
    let (sb, _) = with_object();
    let mut url = sb.root_url().into_bytes();
    url.extend_from_slice(b"caf\xe9.txt");
    let args = [
        OsStr::new("cp"),
        OsStr::new("a.txt"),
        OsStr::from_bytes(&url),
    ];
    sb.fails_cleanly(&args, 2, &["invalid URL", "caf", "UTF-8"]);
}

// --------------------------------------------------------------- sources

#[test]
fn source_missing() {
    let sb = Sandbox::local();
    sb.fails_cleanly(&["upload", "missing.txt"], 1, &["not found", "missing.txt"]);
    sb.fails_cleanly(
        &["cp", "missing.txt", &format!("{}k", sb.root_url())],
        1,
        &["missing.txt"],
    );
}

#[test]
fn source_unreadable() {
    let mut sb = Sandbox::local();
    // Runs xfer as `nobody` when the tests run as root (root reads anything).
    sb.unprivileged();
    let p = sb.file("secret.txt", BODY);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    sb.fails_cleanly(
        &["upload", "secret.txt"],
        1,
        &["permission denied", "secret.txt"],
    );
}

#[test]
fn source_is_a_directory() {
    let sb = Sandbox::local();
    std::fs::create_dir(sb.work().join("photos")).unwrap();
    sb.fails_cleanly(&["upload", "photos"], 2, &["photos", "is a directory"]);
}

#[test]
fn source_name_not_utf8() {
    let sb = Sandbox::local();
    let name = OsStr::from_bytes(b"caf\xe9.txt");
    sb.file(name, BODY);
    let args = [OsStr::new("upload"), name];
    sb.fails_cleanly(&args, 2, &["caf", "--key"]);
    // With an explicit key the same file uploads fine.
    let args = [
        OsStr::new("upload"),
        name,
        OsStr::new("--key"),
        OsStr::new("cafe.txt"),
    ];
    sb.ok(&args);
    assert_eq!(std::fs::read(sb.root().join("cafe.txt")).unwrap(), BODY);
}

// ------------------------------------------------------------------ keys

/// `xfer upload a.txt --key KEY` fails with exit 2 naming the rule.
fn key_refused(key: &str, needle: &str) {
    let sb = Sandbox::local();
    sb.file("a.txt", BODY);
    sb.fails_cleanly(
        &["upload", "a.txt", "--key", key],
        2,
        &["invalid key", needle],
    );
}

/// `xfer cp a.txt ROOT_URL + tail` (a key in URL form) fails with exit 2.
fn url_key_refused(tail: &str, needles: &[&str]) {
    let sb = Sandbox::local();
    sb.file("a.txt", BODY);
    let url = format!("{}{tail}", sb.root_url());
    let mut n = vec![url.as_str()];
    n.extend_from_slice(needles);
    sb.fails_cleanly(&["cp", "a.txt", &url], 2, &n);
}

#[test]
fn key_parent() {
    key_refused("../x", "'..'");
}

#[test]
fn key_nested_parent() {
    key_refused("a/../../x", "'..'");
}

#[test]
fn key_absolute() {
    key_refused("/abs", "start with '/'");
}

#[test]
fn key_empty_segment() {
    key_refused("a//b", "empty segment");
}

#[test]
fn key_dot() {
    key_refused(".", "'.'");
}

#[test]
fn key_dotdot() {
    key_refused("..", "'..'");
}

#[test]
fn key_backslash() {
    key_refused("a\\..\\x", "backslash");
}

#[test]
fn key_trailing_slash() {
    key_refused("a/", "end with '/'");
}

#[test]
fn key_empty() {
    key_refused("", "empty");
}

#[test]
fn key_control_character() {
    key_refused("a\u{1}b", "control character");
}

#[test]
fn key_nul_byte_in_url() {
    // A NUL cannot travel in argv; in a URL it is %00.
    url_key_refused("a%00b", &["control character"]);
}

#[test]
fn key_percent_encoded_dotdot_in_url() {
    // The URL parser would resolve these to `x`, a different key: refused.
    url_key_refused("sub/%2e%2e/%2e%2e/x", &["'..'"]);
    url_key_refused("sub/%2E%2E/x", &["'..'"]);
}

#[test]
fn key_literal_dotdot_in_url() {
    url_key_refused("sub/../../x", &["'..'"]);
}

#[test]
fn key_encoded_slash_and_backslash_in_url() {
    url_key_refused("a%2F..%2F..%2Fx", &["'..'"]);
    url_key_refused("a%5Cb", &["backslash"]);
}

#[test]
fn key_percent_in_a_key_is_literal() {
    // Through --key, `%2e%2e` is just four characters: stored as such,
    // inside the store, nothing escapes.
    let sb = Sandbox::local();
    sb.file("a.txt", BODY);
    sb.ok(&["upload", "a.txt", "--key", "%2e%2e/x"]);
    assert_eq!(std::fs::read(sb.root().join("%2e%2e/x")).unwrap(), BODY);
    assert!(!sb.path("x").exists() && !sb.dir.path().parent().unwrap().join("x").exists());
}

#[test]
fn key_over_the_length_limit() {
    let key = "k/".repeat(512) + "k"; // 1025 bytes
    key_refused(&key, "1024-byte limit");
}

#[test]
fn key_segment_over_the_filesystem_limit() {
    // Within the 1024-byte key limit, but one segment is longer than a
    // file name may be: the local store refuses it as an invalid key (bad
    // input, exit 2), before anything is written.
    let sb = Sandbox::local();
    sb.file("a.txt", BODY);
    let key = "n".repeat(300);
    sb.fails_cleanly(
        &["upload", "a.txt", "--key", &key],
        2,
        &["invalid key", &key, "longer than 255 bytes"],
    );
}

#[test]
fn key_not_utf8() {
    let sb = Sandbox::local();
    sb.file("a.txt", BODY);
    let args = [
        OsStr::new("upload"),
        OsStr::new("a.txt"),
        OsStr::new("--key"),
        OsStr::from_bytes(b"caf\xe9"),
    ];
    sb.fails_cleanly(&args, 2, &["invalid key", "caf", "UTF-8"]);
}

// ---------------------------------------------------------- destinations

#[test]
fn download_destination_directory_missing() {
    let (sb, url) = with_object();
    sb.fails_cleanly(
        &["download", &url, "no/such/dir/"],
        1,
        &["no/such/dir", "does not exist"],
    );
    sb.fails_cleanly(
        &["download", &url, "no/such/file.txt"],
        1,
        &["no/such", "does not exist"],
    );
}

#[test]
fn download_destination_directory_unwritable() {
    let (mut sb, url) = with_object();
    sb.unprivileged();
    let ro = sb.work().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    sb.fails_cleanly(
        &["download", &url, "ro/a.txt"],
        1,
        &["permission denied", "ro"],
    );
}

#[test]
fn download_over_an_existing_file_is_refused() {
    let (sb, url) = with_object();
    sb.file("local.txt", b"precious local edits");
    sb.fails_cleanly(
        &["download", &url, "local.txt"],
        1,
        &["local.txt", "already exists", "--force"],
    );
    sb.fails_cleanly(&["cp", &url, "local.txt"], 1, &["local.txt", "--force"]);
    // Into a directory holding a file of that name: refused as well.
    std::fs::create_dir(sb.work().join("d")).unwrap();
    sb.file("d/a.txt", b"also precious");
    sb.fails_cleanly(&["download", &url, "d"], 1, &["a.txt", "already exists"]);
    // --force overwrites.
    sb.ok(&["download", &url, "local.txt", "--force"]);
    assert_eq!(std::fs::read(sb.work().join("local.txt")).unwrap(), BODY);
}

#[test]
fn download_onto_a_directory() {
    let (sb, url) = with_object();
    // `d/a.txt` is a directory: even --force does not replace it.
    std::fs::create_dir_all(sb.work().join("d/a.txt")).unwrap();
    sb.fails_cleanly(
        &["download", &url, "d", "--force"],
        1,
        &["a.txt", "is a directory"],
    );
}

#[test]
fn download_missing_object_creates_no_file() {
    let (sb, _) = with_object();
    let url = format!("{}missing.txt", sb.root_url());
    sb.fails_cleanly(&["download", &url], 1, &["not found", "missing.txt"]);
}

#[test]
fn upload_create_only_over_an_existing_object() {
    let (sb, _) = with_object();
    sb.file("b.txt", b"newer bytes");
    sb.fails_cleanly(
        &["upload", "b.txt", "--key", "a.txt", "--if-not-exists"],
        1,
        &["already exists", "a.txt"],
    );
    assert_eq!(std::fs::read(sb.root().join("a.txt")).unwrap(), BODY);
}

#[test]
fn upload_to_a_store_not_configured() {
    let (sb, _) = with_object();
    sb.fails_cleanly(&["upload", "a.txt", "--store", "media"], 2, &["\"media\""]);
}

// ------------------------------------------------------------- emulators

fn s3_toml(bucket: &str, secret: &str) -> Option<String> {
    let v = emulator(&[
        "XFERKIT_S3S_ENDPOINT",
        "XFERKIT_S3S_ACCESS_KEY",
        "XFERKIT_S3S_SECRET_KEY",
    ])?;
    let secret = if secret.is_empty() {
        v[2].as_str()
    } else {
        secret
    };
    Some(format!(
        "default_store = \"s3\"\n[stores.s3]\nbackend = \"s3\"\nbucket = {bucket:?}\n\
         endpoint = {:?}\nforce_path_style = true\naccess_key_id = {:?}\n\
         secret_access_key = {secret:?}\n",
        v[0], v[1]
    ))
}

/// A bucket on s3s-fs (created with the right credentials) with `a.txt`.
fn s3_with_object(bucket: &str) -> Option<(Sandbox, String)> {
    let toml = s3_toml(bucket, "")?;
    let endpoint = std::env::var("XFERKIT_S3S_ENDPOINT").unwrap();
    let sb = Sandbox::local().with_config(&toml);
    // CreateBucket through a store with the right credentials.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = xferkit_s3::S3Config::new(bucket);
        c.endpoint = Some(endpoint);
        c.force_path_style = true;
        c.access_key_id = std::env::var("XFERKIT_S3S_ACCESS_KEY").ok();
        c.secret_access_key = std::env::var("XFERKIT_S3S_SECRET_KEY")
            .ok()
            .map(xferkit::Secret::new);
        xferkit_s3::S3Store::new("setup", c)
            .await
            .unwrap()
            .ensure_bucket()
            .await
            .unwrap();
    });
    sb.file("a.txt", BODY);
    let url = sb.ok(&["upload", "a.txt"]).out().to_string();
    Some((sb, url))
}

#[test]
fn s3_presigned_url_expired() {
    let bucket = "xferkit-bad-input";
    let Some((sb, url)) = s3_with_object(bucket) else {
        return;
    };
    let link = sb
        .ok(&["presign", &url, "--expires", "1s"])
        .out()
        .to_string();
    // s3s-fs checks the expiry of a presigned URL (moto would not).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let r = sb.fails_cleanly(&["download", &link, "got.txt"], 1, &["permission denied"]);
    // The link's path is named; its query (the signature) is not.
    let path = link.split('?').next().unwrap();
    assert!(r.stderr.contains(path), "{r:?}");
    assert!(!r.stderr.contains("X-Amz-Signature="), "{r:?}");
}

#[test]
fn s3_wrong_secret() {
    let bucket = "xferkit-bad-input";
    let Some((good, url)) = s3_with_object(bucket) else {
        return;
    };
    let sb =
        Sandbox::local().with_config(&s3_toml(bucket, "not-the-secret-key-0123456789").unwrap());
    sb.file("b.txt", BODY);
    let key = unique("wrong-secret");
    sb.fails_cleanly(
        &["upload", "b.txt", "--key", &key],
        1,
        &["permission denied", &format!("s3://{bucket}/{key}")],
    );
    sb.fails_cleanly(
        &["download", &url, "got.txt"],
        1,
        &["permission denied", &url],
    );
    // Nothing appeared under the key (checked with the right credentials).
    let r = good.run(&["stat", &format!("s3://{bucket}/{key}")]);
    check_failure(&r, 1, &["not found"], "stat after a refused upload");
}

#[test]
fn azure_wrong_key() {
    let Some(v) = emulator(&[
        "XFERKIT_AZURITE_ENDPOINT",
        "XFERKIT_AZURITE_ACCOUNT",
        "XFERKIT_AZURITE_KEY",
    ]) else {
        return;
    };
    let container = "xferkit-bad-input";
    let toml = |key: &str| {
        format!(
            "default_store = \"az\"\n[stores.az]\nbackend = \"azure\"\naccount = {:?}\n\
             container = {container:?}\nendpoint = {:?}\naccount_key = {key:?}\n",
            v[1], v[0]
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = xferkit_azure::AzureConfig::new(&v[1], container);
        c.endpoint = Some(v[0].clone());
        c.account_key = Some(xferkit::Secret::new(v[2].clone()));
        xferkit_azure::AzureStore::new("setup", c)
            .await
            .unwrap()
            .create_container_if_missing()
            .await
            .unwrap();
    });
    // A well-formed key (base64, 64 bytes) that is not the account's.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleS0xMjM0NTY3ODk=";
    let sb = Sandbox::local().with_config(&toml(wrong));
    sb.file("b.txt", BODY);
    let key = unique("wrong-key");
    let url = format!("az://{}/{container}/{key}", v[1]);
    sb.fails_cleanly(
        &["upload", "b.txt", "--key", &key],
        1,
        &["permission denied", &url],
    );
    sb.fails_cleanly(
        &["download", &url, "got.txt"],
        1,
        &["permission denied", &url],
    );
    let good = Sandbox::local().with_config(&toml(&v[2]));
    let r = good.run(&["stat", &url]);
    check_failure(&r, 1, &["not found"], "stat after a refused upload");
}
