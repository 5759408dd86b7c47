//! The sharing commands end to end on local stores: `xfer serve` in front of
//! a local store, `xfer upload --share`, thumbnails of image uploads, and
//! content dedupe.

#![allow(clippy::unwrap_used)]

// The CLI crate's test helpers (Sandbox, xfer_in, Rng...), shared, not copied.
#[path = "../../crates/xferkit-cli/tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Spawn, outcome, xfer_in};

const SIGNING_KEY: &str = "cli-share-test-signing-key-0123456789abcdef";
const MAX_SIDE: u32 = 80;

fn xfer_cmd(dir: &Path) -> Command {
    let mut c = xfer_in(dir);
    c.env("XFERKIT_STORES__LOCAL__SIGNING_KEY", SIGNING_KEY)
        .env_remove("XFERKIT_LOG");
    c
}

fn xfer(dir: &Path, args: &[&str]) -> (i32, String, String) {
    outcome(xfer_cmd(dir).args(args))
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = xfer(dir, args);
    assert_eq!(code, 0, "xfer {args:?} failed: {err}");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `xfer serve` as a child; killed (by its PID) on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, port: u16) -> Serve {
    let child = xfer_cmd(dir)
        .args(["-vv", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_or_panic();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "xfer serve did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Serve(child)
}

fn setup() -> (tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path();
    std::fs::write(
        d.join("xferkit.toml"),
        format!(
            "default_store = \"local\"\n\
             [thumbnail]\nmax_side = {MAX_SIDE}\n\
             [stores.local]\nbackend = \"local\"\nroot = \"files\"\n\
             serve_url = \"http://127.0.0.1:{port}/share\"\n\
             [stores.cas]\nbackend = \"local\"\nroot = \"cas\"\ndedupe = \"content\"\n"
        ),
    )
    .unwrap();
    (dir, port)
}

fn png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 90]))
        .save(path)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_share_is_fetchable_by_anyone_and_tampering_is_refused() {
    let (dir, port) = setup();
    let d = dir.path();
    let mut server = serve(d, port);
    png(&d.join("cat.png"), 400, 200);
    let body = std::fs::read(d.join("cat.png")).unwrap();

    let link = ok(
        d,
        &[
            "upload",
            "cat.png",
            "--key",
            "pics/cat.png",
            "--share",
            "10m",
        ],
    );
    assert!(
        link.starts_with(&format!(
            "http://127.0.0.1:{port}/share/pics/cat.png?expires="
        )),
        "{link}"
    );
    let http = reqwest::Client::new();
    let r = http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.bytes().await.unwrap() == body);

    // Anyone holding the link can also fetch it with xfer (the http store).
    ok(d, &["download", &link, "fetched.png"]);
    assert!(std::fs::read(d.join("fetched.png")).unwrap() == body);

    let tampered = link.replace("cat.png?", "dog.png?");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
    let unsigned = link.split('?').next().unwrap();
    assert_eq!(http.get(unsigned).send().await.unwrap().status(), 403);
    let forged = format!("{}&sig=00", link.split("&sig=").next().unwrap());
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);
    // A GET link does not allow a PUT.
    let r = http.put(&link).body("overwrite").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(std::fs::read(d.join("files/pics/cat.png")).unwrap() == body);

    // A presigned PUT lets a sender without credentials upload.
    std::fs::write(d.join("note.txt"), "v1").unwrap();
    let url = ok(d, &["upload", "note.txt", "--key", "inbox/note.txt"]);
    let put = ok(d, &["presign", &url, "--method", "put", "--expires", "5m"]);
    let r = http
        .put(&put)
        .body("v2 from a receiver")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        std::fs::read_to_string(d.join("files/inbox/note.txt")).unwrap(),
        "v2 from a receiver"
    );

    // A PUT URL with a signed size limit: a body within it is stored, a
    // larger one gets 413 and changes nothing, and the limit cannot be
    // stripped from the URL (403).
    let put = ok(
        d,
        &["presign", &url, "--method", "put", "--max-size", "1KiB"],
    );
    assert!(put.contains("max_size=1024"), "{put}");
    let r = http.put(&put).body(vec![b'a'; 1024]).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = http.put(&put).body(vec![b'b'; 1025]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        std::fs::read(d.join("files/inbox/note.txt")).unwrap(),
        vec![b'a'; 1024]
    );
    let stripped = put.replace("&max_size=1024", "");
    let r = http.put(&stripped).body("x").send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Where no limit can be signed, the command says so (exit 2).
    let (code, _, err) = xfer(d, &["presign", &url, "--max-size", "1KiB"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--method put"), "{err}");

    // The thumbnail: stored next to the object, shareable, within max_side.
    let v: serde_json::Value = serde_json::from_str(&ok(
        d,
        &[
            "--json",
            "upload",
            "cat.png",
            "--key",
            "pics/cat2.png",
            "--share",
            "10m",
        ],
    ))
    .unwrap();
    assert!(
        v["thumbnail_url"]
            .as_str()
            .unwrap()
            .ends_with("pics/cat2.png.thumb.jpg"),
        "{v}"
    );
    let thumb = http
        .get(v["thumbnail_share_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status(), 200);
    let img = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (MAX_SIDE, MAX_SIDE / 2));
    assert!(v["share_expires_at"].as_u64().unwrap() > 0);

    // A large shared file comes down through the ranged, resumable path of
    // the http link store (several concurrent Range GETs against xfer serve).
    let big: Vec<u8> = (0..40_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("big.bin"), &big).unwrap();
    let big_link = ok(d, &["upload", "big.bin", "--share", "10m"]);
    ok(d, &["download", &big_link, "big-back.bin"]);
    assert!(
        std::fs::read(d.join("big-back.bin")).unwrap() == big,
        "ranged download differs"
    );

    // The server never logs the signing key or a signature.
    server.0.kill().unwrap();
    let mut log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("served"), "expected request logs: {log}");
    let ranged = log
        .lines()
        .filter(|l| l.contains("big.bin") && l.contains("206"))
        .count();
    assert!(
        ranged >= 2,
        "expected several ranged GETs of big.bin: {log}"
    );
    assert!(!log.contains(SIGNING_KEY), "signing key in the server log");
    let sig = link.split("sig=").nth(1).unwrap();
    assert!(!log.contains(sig), "a signature in the server log: {log}");
}

#[test]
fn bad_images_fail_only_the_thumbnail() {
    let (dir, _) = setup();
    let d = dir.path();
    std::fs::write(d.join("broken.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    let (code, out, err) = xfer(d, &["upload", "broken.png"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("file://"), "{out}");
    assert!(
        err.contains("warning") && err.contains("broken.png") && err.contains("no thumbnail"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(d.join("files/broken.png").exists());
    assert!(!d.join("files/broken.png.thumb.jpg").exists());

    // Thumbnails can be turned off per upload.
    png(&d.join("ok.png"), 50, 50);
    ok(d, &["upload", "ok.png", "--no-thumbnail"]);
    assert!(!d.join("files/ok.png.thumb.jpg").exists());
    ok(d, &["upload", "ok.png", "--key", "ok2.png"]);
    assert!(d.join("files/ok2.png.thumb.jpg").exists());
}

#[test]
fn a_second_upload_of_the_same_content_moves_nothing() {
    let (dir, _) = setup();
    let d = dir.path();
    let body: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(d.join("report.pdf"), &body).unwrap();
    std::fs::write(d.join("copy of report.pdf"), &body).unwrap();
    let first: serde_json::Value = serde_json::from_str(&ok(
        d,
        &["--json", "upload", "report.pdf", "--store", "cas"],
    ))
    .unwrap();
    let second: serde_json::Value = serde_json::from_str(&ok(
        d,
        &["--json", "upload", "copy of report.pdf", "--store", "cas"],
    ))
    .unwrap();
    assert_eq!(first["deduplicated"], false, "{first}");
    assert_eq!(first["transferred"], 1_500_000, "{first}");
    assert_eq!(second["deduplicated"], true, "{second}");
    assert_eq!(second["transferred"], 0, "{second}");
    assert_eq!(first["url"], second["url"]);
    let key = first["key"].as_str().unwrap();
    assert!(key.starts_with("sha256/") && key.ends_with(".pdf"), "{key}");
    assert!(std::fs::read(d.join("cas").join(key)).unwrap() == body);
    // Different content, different key.
    std::fs::write(d.join("other.pdf"), b"other").unwrap();
    let third: serde_json::Value =
        serde_json::from_str(&ok(d, &["--json", "upload", "other.pdf", "--store", "cas"])).unwrap();
    assert_ne!(third["url"], first["url"]);
}

#[test]
fn serve_and_share_errors_name_the_missing_setting() {
    let (dir, _) = setup();
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "a").unwrap();
    // The `cas` store has no serve_url: it cannot be served or shared.
    let (code, _, err) = xfer(d, &["serve", "--store", "cas"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stores.cas.serve_url"), "{err}");
    let (code, _, err) = xfer(d, &["upload", "a.txt", "--store", "cas", "--share", "1h"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("serve_url") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        !d.join("cas/a.txt").exists(),
        "nothing is uploaded when sharing is impossible"
    );
    // A signing key that is too short is refused, naming the key, not showing it.
    let (code, _, err) = {
        let out = xfer_cmd(d)
            .env("XFERKIT_STORES__LOCAL__SIGNING_KEY", "short-key")
            .args(["upload", "a.txt"])
            .output_or_panic();
        (
            out.status.code().unwrap(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("stores.local.signing_key is too short"),
        "{err}"
    );
    assert!(!err.contains("short-key"), "{err}");
}

/// `xfer upload --encrypt --share`: the served object is ciphertext; the
/// link (the signed serve URL with `#aes128gcm.KEY.DIGEST`) downloads and
/// `cat`s back to the plaintext, through one stream and through ranges; a
/// wrong digest fails with nothing left; and the fragment shows up nowhere
/// but in the one line that is the link, even at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_share_links_work_through_serve_and_never_show_their_secret() {
    let (dir, port) = setup();
    let d = dir.path();
    // Ranges from 128 KiB, in 64 KiB parts: records straddle the parts.
    let mut toml = std::fs::read_to_string(d.join("xferkit.toml")).unwrap();
    toml.push_str("[download]\npart_size = 65536\nparallel_threshold = 131072\n");
    std::fs::write(d.join("xferkit.toml"), toml).unwrap();
    let mut server = serve(d, port);
    let http = reqwest::Client::new();
    let loud = |args: &[&str]| {
        let mut c = xfer_cmd(d);
        c.env("XFERKIT_LOG", "trace").arg("-vvv").args(args);
        outcome(&mut c)
    };
    let mut fragments = Vec::new();
    for (name, len) in [("small.bin", 70_000usize), ("big.bin", 300_000)] {
        let body: Vec<u8> = (0..len as u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(d.join(name), &body).unwrap();
        let key = format!("sealed/{name}");
        let (code, link, err) =
            loud(&["upload", name, "--key", &key, "--share", "10m", "--encrypt"]);
        assert_eq!(code, 0, "{err}");
        let link = link.trim().to_string();
        let (url, frag) = link.split_once('#').unwrap();
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{port}/share/{key}?")),
            "{url}"
        );
        assert!(frag.starts_with("aes128gcm."), "{frag}");
        assert!(!err.contains(frag), "upload stderr shows the fragment");
        fragments.push(frag.to_string());
        let served = http.get(url).send().await.unwrap();
        assert_eq!(served.status(), 200);
        assert_eq!(served.headers()["content-type"], "application/octet-stream");
        let stored = served.bytes().await.unwrap();
        assert_eq!(stored.len() as u64, xferkit::e2e::sealed_size(len as u64));
        assert!(
            !stored.windows(32).any(|w| w == &body[500..532]),
            "plaintext served"
        );

        let out = format!("back-{name}");
        let (code, printed, err) = loud(&["download", &link, &out]);
        assert_eq!(code, 0, "{err}");
        assert!(
            std::fs::read(d.join(&out)).unwrap() == body,
            "{name} differs"
        );
        assert!(
            !format!("{printed}{err}").contains(frag),
            "download shows the fragment"
        );
        let cat = xfer_cmd(d)
            .args(["cat", &link, "--range", "65000-139999"])
            .output()
            .unwrap();
        assert!(cat.status.success(), "{cat:?}");
        assert!(
            cat.stdout == body[65_000..140_000.min(len)],
            "cat --range of {name}"
        );
        let cat = xfer_cmd(d).args(["cat", &link]).output().unwrap();
        assert!(cat.status.success() && cat.stdout == body, "cat of {name}");

        // The right key with another digest: refused, nothing written.
        let (k, _) = frag.rsplit_once('.').unwrap();
        let other = format!("{url}#{k}.{}", "A".repeat(43));
        let (code, printed, err) = loud(&["download", &other, "refused.bin"]);
        assert_ne!(code, 0, "a wrong digest was accepted");
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(!d.join("refused.bin").exists());
        assert!(
            !format!("{printed}{err}").contains(k),
            "the key shows in an error"
        );
    }
    // Without --share the link is the canonical URL with the fragment.
    let (code, link, err) = loud(&[
        "upload",
        "small.bin",
        "--key",
        "sealed/plain-url",
        "--encrypt",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        link.trim().starts_with("file://") && link.contains("#aes128gcm."),
        "{link}"
    );
    let (code, _, err) = loud(&["download", link.trim(), "canonical.bin"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(d.join("canonical.bin")).unwrap()
            == std::fs::read(d.join("small.bin")).unwrap()
    );

    server.0.kill().unwrap();
    let mut log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("sealed/big.bin"),
        "expected request logs: {log}"
    );
    for f in &fragments {
        let (_, rest) = f.split_once('.').unwrap();
        assert!(!log.contains(rest), "the server log shows a fragment");
    }
}
