//! Secrets never leak: every backend, driven through the real `xfer` binary
//! at the loudest log level (`XFERKIT_LOG=trace` opens every dependency's
//! logs — the SDKs, hyper, reqwest — and `-vvv` xferkit's own), with known
//! credentials, doing real work and failing with wrong credentials. Neither
//! stdout nor stderr may contain any of them: not the S3 secret key, not the
//! Azure account key, connection string or SAS signature, not any 16-byte
//! window of the GCS service-account private key, and not the signature of
//! a presigned URL anywhere but the one stdout line that is that URL.
//! `Debug` of every backend's config and store, and of the facade, is
//! checked the same way without any emulator.
//!
//! The emulator tests pass vacuously with a note when the emulator
//! variables are missing, except under `CI` / `XFERKIT_REQUIRE_EMULATORS=1`,
//! where they fail.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use common::{Sandbox, emulator, unique};
use xferkit::Secret;
use xferkit::backends::{azure, gcs, s3};

/// Shortest leaked fragment the window check catches.
const WINDOW: usize = 16;

/// What must never be printed.
#[derive(Default)]
struct Secrets {
    /// Must not appear whole.
    exact: Vec<String>,
    /// Must not appear even as any `WINDOW`-byte piece.
    windows: HashSet<Vec<u8>>,
}

impl Secrets {
    fn exact(&mut self, s: &str) -> &mut Self {
        assert!(!s.is_empty());
        self.exact.push(s.to_string());
        self
    }

    /// `s` whole and every `WINDOW`-byte piece of it.
    fn windows(&mut self, s: &str) -> &mut Self {
        self.exact(s);
        for w in s.as_bytes().windows(WINDOW) {
            self.windows.insert(w.to_vec());
        }
        self
    }

    fn check(&self, text: &str, what: &str) {
        for (n, s) in self.exact.iter().enumerate() {
            assert!(
                !text.contains(s.as_str()),
                "{what}: secret #{n} ({}…) leaked:\n{}",
                &s[..6.min(s.len())],
                excerpt(text, s)
            );
            assert!(
                !text.contains(s.as_str()),
                "{what}: a secret leaked:\n{}",
                excerpt(text, s)
            );
        }
        for (i, w) in text.as_bytes().windows(WINDOW).enumerate() {
            if self.windows.contains(w) {
                let piece = String::from_utf8_lossy(w);
                panic!(
                    "{what}: a {WINDOW}-byte piece of a secret leaked at byte {i}: {piece:?}\n{}",
                    excerpt(text, &piece)
                );
            }
        }
    }
}

/// The line of `text` containing `needle`, for the failure message.
fn excerpt(text: &str, needle: &str) -> String {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or("")
        .chars()
        .take(400)
        .collect()
}

/// A sandbox running `xfer` at trace level with `toml` as its config.
fn loud(toml: &str) -> Sandbox {
    Sandbox::local()
        .with_config(toml)
        .with_env("XFERKIT_LOG", "trace")
}

/// Everything one run printed that must be free of secrets.
struct Printed {
    code: Option<i32>,
    /// stdout, except a presign's URL line (see [`run_loud`]).
    stdout: String,
    stderr: String,
    /// The presigned URL, for `presign` runs.
    presigned: Option<String>,
}

/// Run `xfer -vvv ARGS`. For `presign`, stdout *is* the signed URL (text:
/// its one line; `--json`: one JSON document holding it): a bearer
/// credential the user asked for, so it is set aside in `presigned` instead
/// of being checked; its signature is then checked against stderr.
fn run_loud(sb: &Sandbox, args: &[&str]) -> Printed {
    let mut full = vec!["-vvv"];
    full.extend_from_slice(args);
    let r = sb.run(&full);
    assert!(!r.stderr.contains("panicked"), "xfer {args:?}: {r:?}");
    let (stdout, presigned) = if args.contains(&"presign") && r.code == Some(0) {
        let url = if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(r.out()).unwrap();
            v["url"].as_str().unwrap().to_string()
        } else {
            r.out().to_string()
        };
        (String::new(), Some(url))
    } else {
        (r.stdout.clone(), None)
    };
    Printed {
        code: r.code,
        stdout,
        stderr: r.stderr,
        presigned,
    }
}

/// Run each of `runs` (expecting `ok` to say whether it succeeds) and check
/// all output against `secrets`; presigned URLs' signatures (the value of
/// `sig_param`) must not show up on stderr either.
fn check_runs(sb: &Sandbox, runs: &[(&[&str], bool)], secrets: &Secrets, sig_param: &str) {
    let mut traced = false;
    for (args, ok) in runs {
        let p = run_loud(sb, args);
        assert_eq!(
            p.code == Some(0),
            *ok,
            "xfer {args:?}: exit {:?}, stderr tail: {}",
            p.code,
            p.stderr.lines().last().unwrap_or("")
        );
        let what = format!("xfer {args:?}");
        traced |= p.stderr.contains("TRACE");
        secrets.check(&p.stdout, &format!("{what} stdout"));
        secrets.check(&p.stderr, &format!("{what} stderr"));
        if let Some(url) = &p.presigned {
            let sig = query_param(url, sig_param)
                .unwrap_or_else(|| panic!("{what}: no {sig_param} in {url}"));
            assert!(sig.len() >= WINDOW, "{sig}");
            let mut s = Secrets::default();
            s.windows(&sig);
            s.check(&p.stderr, &format!("{what} stderr (presigned signature)"));
        }
    }
    // Trace level really was on: dependencies logged (otherwise this test
    // would prove nothing).
    assert!(traced, "no TRACE output from {runs:?}");
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

/// A 6 MiB file: above the 5 MiB multipart threshold the configs set, so
/// the multipart/block/resumable paths are logged too.
fn big_file(sb: &Sandbox) -> PathBuf {
    let data: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    sb.file("big.bin", &data)
}

// -------------------------------------------------------------------- S3

#[test]
fn s3_secrets_never_printed_at_trace_level() {
    let Some(v) = emulator(&[
        "XFERKIT_S3S_ENDPOINT",
        "XFERKIT_S3S_ACCESS_KEY",
        "XFERKIT_S3S_SECRET_KEY",
    ]) else {
        return;
    };
    let (endpoint, id, secret) = (&v[0], &v[1], &v[2]);
    let wrong = "wrong-secret-key-for-the-leak-test-42";
    let bucket = "xferkit-secrets";
    let toml = |secret: &str| {
        format!(
            "default_store = \"s3\"\n[stores.s3]\nbackend = \"s3\"\nbucket = {bucket:?}\n\
             endpoint = {endpoint:?}\nforce_path_style = true\naccess_key_id = {id:?}\n\
             secret_access_key = {secret:?}\nmultipart_threshold = 5242880\npart_size = 5242880\n\
             prefix = {:?}\n",
            unique("secrets")
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = s3::S3Config::new(bucket);
        c.endpoint = Some(endpoint.clone());
        c.force_path_style = true;
        c.access_key_id = Some(id.clone());
        c.secret_access_key = Some(Secret::new(secret.clone()));
        s3::S3Store::new("setup", c)
            .await
            .unwrap()
            .ensure_bucket()
            .await
            .unwrap();
    });
    let mut secrets = Secrets::default();
    secrets.windows(secret).windows(wrong);

    let sb = loud(&toml(secret));
    big_file(&sb);
    sb.file("small.txt", b"small");
    let url = sb
        .ok(&["upload", "small.txt", "--key", "d/small.txt"])
        .out()
        .to_string();
    let prefix = url.rsplit_once('/').unwrap().0.to_string() + "/";
    let runs: &[(&[&str], bool)] = &[
        (&["upload", "big.bin", "--key", "d/big.bin"], true),
        (&["stat", &url], true),
        (&["--json", "stat", &url], true),
        (&["ls", &prefix], true),
        (&["download", &url, "back.txt"], true),
        (&["presign", &url, "--expires", "10m"], true),
        (&["--json", "presign", &url, "--method", "put"], true),
        (&["stores"], true),
        (&["rm", &url], true),
        (&["stat", &url], false),
    ];
    check_runs(&sb, runs, &secrets, "X-Amz-Signature");

    // An encrypted attachment (multipart): its link's key and digest are
    // printed once, as the upload's result, and nowhere else; not by the
    // commands that take the link, nor by those that refuse it.
    let up = run_loud(
        &sb,
        &["upload", "big.bin", "--key", "d/sealed.bin", "--encrypt"],
    );
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let link = up.stdout.trim().to_string();
    let (base, frag) = link.split_once('#').unwrap();
    let mut sealed = Secrets::default();
    for part in frag.split('.').skip(1) {
        sealed.windows(part);
    }
    sealed.check(&up.stderr, "xfer upload --encrypt stderr");
    let other = format!("{}.{}", frag.rsplit_once('.').unwrap().0, "A".repeat(43));
    let other = format!("{base}#{other}");
    let runs: &[(&[&str], bool)] = &[
        (&["download", &link, "sealed.bin"], true),
        (&["--json", "download", &link, "sealed2.bin"], true),
        (&["cat", &link, "--range", "0-99"], true),
        (&["download", &other, "refused.bin"], false),
        (&["stat", &link], false),
        (&["rm", &link], false),
    ];
    check_runs(&sb, runs, &sealed, "X-Amz-Signature");
    assert!(!sb.path("refused.bin").exists());

    // Wrong credentials: refused, and neither secret printed.
    let bad = loud(&toml(wrong));
    bad.file("small.txt", b"small");
    let runs: &[(&[&str], bool)] = &[
        (&["upload", "small.txt", "--key", "w.txt"], false),
        (&["stat", &url], false),
        (&["ls", &prefix], false),
    ];
    check_runs(&bad, runs, &secrets, "X-Amz-Signature");
}

// ------------------------------------------------------------------- GCS

/// The base64 body of the test key (header and footer lines dropped), as
/// one string and line by line.
fn pem_secrets(s: &mut Secrets) {
    let pem = xferkit_conformance::gcs::TEST_KEY_PEM;
    let lines: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect();
    assert!(lines.len() > 10, "unexpected PEM fixture");
    s.windows(&lines.concat());
    for l in &lines {
        s.windows(l);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_secrets_never_printed_at_trace_level() {
    let Some(v) = emulator(&["XFERKIT_FAKE_GCS_ENDPOINT"]) else {
        return;
    };
    let endpoint = v[0].trim_end_matches('/').to_string();
    let bucket = "xferkit-secrets";
    xferkit_conformance::gcs::ensure_bucket(&endpoint, bucket)
        .await
        .unwrap();

    let mut secrets = Secrets::default();
    pem_secrets(&mut secrets);
    let keydir = tempfile::tempdir().unwrap();
    let cred = xferkit_conformance::gcs::service_account_file(keydir.path()).unwrap();
    let toml = |anonymous: bool| {
        format!(
            "default_store = \"g\"\n[stores.g]\nbackend = \"gcs\"\nbucket = {bucket:?}\n\
             endpoint = {endpoint:?}\nanonymous = {anonymous}\ncredentials_file = {:?}\n\
             multipart_threshold = 5242880\nchunk_size = 2097152\nprefix = {:?}\n",
            cred.display().to_string(),
            unique("secrets")
        )
    };
    let sb = loud(&toml(true));
    big_file(&sb);
    sb.file("small.txt", b"small");
    let url = sb
        .ok(&["upload", "small.txt", "--key", "d/small.txt"])
        .out()
        .to_string();
    let prefix = url.rsplit_once('/').unwrap().0.to_string() + "/";
    let runs: &[(&[&str], bool)] = &[
        (&["upload", "big.bin", "--key", "d/big.bin"], true),
        (&["stat", &url], true),
        (&["ls", &prefix], true),
        (&["download", &url, "back.txt"], true),
        // Signed with the service-account key.
        (&["presign", &url, "--expires", "10m"], true),
        (&["--json", "presign", &url, "--method", "put"], true),
        (&["stores"], true),
        (&["rm", &url], true),
    ];
    check_runs(&sb, runs, &secrets, "X-Goog-Signature");

    // Not anonymous: the key signs a token request, which fails (the token
    // endpoint is closed). The failure names the key file, never the key.
    let bad = loud(&toml(false));
    let runs: &[(&[&str], bool)] = &[(&["stat", &url], false), (&["stores"], false)];
    check_runs(&bad, runs, &secrets, "X-Goog-Signature");
}

// ----------------------------------------------------------------- Azure

#[test]
fn azure_secrets_never_printed_at_trace_level() {
    let Some(v) = emulator(&[
        "XFERKIT_AZURITE_ENDPOINT",
        "XFERKIT_AZURITE_ACCOUNT",
        "XFERKIT_AZURITE_KEY",
    ]) else {
        return;
    };
    let (endpoint, account, key) = (&v[0], &v[1], &v[2]);
    let container = "xferkit-secrets";
    // A well-formed key (base64 of 64 bytes) that is not the account's.
    let wrong = "bm90LXRoZS1hY2NvdW50LWtleS1ub3QtdGhlLWFjY291bnQta2V5LW5vdC10aGUtYWNjb3VudC1rZXk=";
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={endpoint};"
    );
    let prefix = unique("secrets");
    let store_toml = |credential: &str| {
        format!(
            "default_store = \"az\"\n[stores.az]\nbackend = \"azure\"\naccount = {account:?}\n\
             container = {container:?}\nendpoint = {endpoint:?}\n{credential}\n\
             multipart_threshold = 5242880\nblock_size = 5242880\nprefix = {prefix:?}\n"
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = azure::AzureConfig::new(account, container);
        c.endpoint = Some(endpoint.clone());
        c.account_key = Some(Secret::new(key.clone()));
        azure::AzureStore::new("setup", c)
            .await
            .unwrap()
            .create_container_if_missing()
            .await
            .unwrap();
    });
    let mut secrets = Secrets::default();
    secrets.windows(key).windows(wrong).exact(&conn);

    // Account key: the store mints account SAS tokens from it for every
    // request; their `sig=` must not be logged (the SDK logs URLs).
    let sb = loud(&store_toml(&format!("account_key = {key:?}")));
    big_file(&sb);
    sb.file("small.txt", b"small");
    let url = sb
        .ok(&["upload", "small.txt", "--key", "d/small.txt"])
        .out()
        .to_string();
    let list = url.rsplit_once('/').unwrap().0.to_string() + "/";
    let runs: &[(&[&str], bool)] = &[
        (&["upload", "big.bin", "--key", "d/big.bin"], true),
        (&["stat", &url], true),
        (&["ls", &list], true),
        (&["download", &url, "back.txt"], true),
        (&["presign", &url, "--expires", "10m"], true),
        (&["--json", "presign", &url, "--method", "put"], true),
        (&["stores"], true),
    ];
    check_runs(&sb, runs, &secrets, "sig");
    assert_no_unredacted_sig(&sb, &url);

    // A SAS token: a read-only blob SAS for d/small.txt, as a user would be
    // handed one. Reads work; an upload is refused (a failing op).
    let link = sb
        .ok(&["presign", &url, "--expires", "10m"])
        .out()
        .to_string();
    let sas = link.split_once('?').unwrap().1.to_string();
    let sig = query_param(&link, "sig").unwrap();
    let decoded = percent_decode(&sig);
    let mut sas_secrets = Secrets::default();
    sas_secrets
        .windows(key)
        .exact(&sas)
        .windows(&sig)
        .windows(&decoded);
    let with_sas = loud(&store_toml(&format!("sas_token = {sas:?}")));
    with_sas.file("small.txt", b"small");
    let runs: &[(&[&str], bool)] = &[
        (&["stat", &url], true),
        (&["download", &url, "back.txt"], true),
        (&["upload", "small.txt", "--key", "d/other.txt"], false),
        (&["stores"], true),
    ];
    check_runs(&with_sas, runs, &sas_secrets, "sig");

    // A connection string.
    let with_conn = loud(&store_toml(&format!("connection_string = {conn:?}")));
    let runs: &[(&[&str], bool)] = &[
        (&["stat", &url], true),
        (&["ls", &list], true),
        (&["download", &url, "back.txt"], true),
        (&["rm", &url], true),
    ];
    check_runs(&with_conn, runs, &secrets, "sig");

    // Wrong key: refused, nothing printed.
    let bad = loud(&store_toml(&format!("account_key = {wrong:?}")));
    bad.file("small.txt", b"small");
    let runs: &[(&[&str], bool)] = &[
        (&["upload", "small.txt", "--key", "w.txt"], false),
        (&["stat", &url], false),
        (&["ls", &list], false),
    ];
    check_runs(&bad, runs, &secrets, "sig");
}

/// Whatever SAS the store minted internally (the test cannot know its
/// value), a logged `sig=` must be redacted.
fn assert_no_unredacted_sig(sb: &Sandbox, url: &str) {
    let p = run_loud(sb, &["stat", url]);
    for (i, _) in p.stderr.match_indices("sig=") {
        let value: String = p.stderr[i + 4..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "%+/=".contains(*c))
            .collect();
        assert!(
            value.is_empty() || value == "REDACTED",
            "a SAS signature was logged: sig={value}"
        );
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

// ----------------------------------------------------------------- Debug

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_of_every_config_and_store_hides_secrets() {
    let s3_secret = "s3-secret-for-the-debug-test-0123456789";
    let s3_token = "s3-session-token-for-the-debug-test";
    let az_key = "YXp1cmUta2V5LWZvci10aGUtZGVidWctdGVzdC1henVyZS1rZXktZm9yLXRoZS1kZWJ1Zy10ZXN0IQ==";
    let conn = format!(
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={az_key};EndpointSuffix=core.windows.net"
    );
    let sas = "sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2099-01-01T00%3A00%3A00Z&sig=c2FzLXNpZ25hdHVyZS1mb3ItdGhlLWRlYnVnLXRlc3Q%3D";
    let mut secrets = Secrets::default();
    secrets
        .windows(s3_secret)
        .windows(s3_token)
        .windows(az_key)
        .exact(&conn)
        .exact(sas)
        .windows("c2FzLXNpZ25hdHVyZS1mb3ItdGhlLWRlYnVnLXRlc3Q");
    pem_secrets(&mut secrets);

    let mut printed = Vec::new();

    let mut c = s3::S3Config::new("b");
    c.endpoint = Some("http://127.0.0.1:1".into());
    c.access_key_id = Some("AKIDEXAMPLE".into());
    c.secret_access_key = Some(Secret::new(s3_secret));
    c.session_token = Some(Secret::new(s3_token));
    printed.push(format!("{c:?} {c:#?}"));
    let store = s3::S3Store::new("s3", c).await.unwrap();
    printed.push(format!("{store:?} {store:#?}"));

    for cred in 0..3 {
        let mut c = azure::AzureConfig::new("acct", "media");
        match cred {
            0 => c.account_key = Some(Secret::new(az_key)),
            1 => {
                c.account = String::new();
                c.connection_string = Some(Secret::new(conn.clone()));
            }
            _ => c.sas_token = Some(Secret::new(sas)),
        }
        printed.push(format!("{c:?} {c:#?}"));
        let store = azure::AzureStore::new("az", c).await.unwrap();
        printed.push(format!("{store:?} {store:#?}"));
    }

    let dir = tempfile::tempdir().unwrap();
    let mut c = gcs::GcsConfig::new("b");
    c.endpoint = Some("http://127.0.0.1:1".into());
    c.anonymous = true;
    c.credentials_file = Some(xferkit_conformance::gcs::service_account_file(dir.path()).unwrap());
    printed.push(format!("{c:?} {c:#?}"));
    // Anonymous with a key file: the key is loaded (to sign URLs) and held.
    let store = gcs::GcsStore::new("g", c).await.unwrap();
    printed.push(format!("{store:?} {store:#?}"));

    // The facade: settings, registry and every store in it.
    let toml = format!(
        "[stores.s3]\nbackend = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:1\"\n\
         access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = {s3_secret:?}\n\
         [stores.az]\nbackend = \"azure\"\ncontainer = \"media\"\nconnection_string = {conn:?}\n\
         [stores.g]\nbackend = \"gcs\"\nbucket = \"b\"\nanonymous = true\ncredentials_file = {:?}\n",
        xferkit_conformance::gcs::service_account_file(dir.path())
            .unwrap()
            .display()
            .to_string()
    );
    let file = dir.path().join("xferkit.toml");
    std::fs::write(&file, toml).unwrap();
    let kit = xferkit::Xferkit::load(Some(&file)).await.unwrap();
    printed.push(format!("{kit:?} {kit:#?}"));
    for name in kit.registry().names() {
        let s = kit.registry().get(&name).unwrap();
        printed.push(format!("{s:?} {s:#?}"));
    }

    for (i, p) in printed.iter().enumerate() {
        secrets.check(p, &format!("Debug #{i}"));
    }
}
