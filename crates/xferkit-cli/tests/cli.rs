//! The `xfer` binary end to end, against local stores in temp directories.
//!
//! Every run gets a clean environment: `HOME`, `XDG_DATA_HOME` and
//! `XDG_CONFIG_HOME` point into a temp dir and no `XFERKIT_*` variable leaks
//! in, so nothing touches the real home.

// clippy.toml allows unwrap inside `#[test]` fns; the helpers here are test
// code too, and a failed setup should panic loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Run, Sandbox, Spawn, pseudo_random};

#[test]
fn upload_then_download_is_byte_identical() {
    let sb = Sandbox::local();
    std::fs::create_dir(sb.work().join("out")).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty.bin", Vec::new()),
        ("héllo wörld ✓ #1.txt", "grüße\n".as_bytes().to_vec()),
        (
            "five-mib.bin",
            pseudo_random(5 * 1024 * 1024, 0x9E37_79B9_7F4A_7C15),
        ),
    ];
    for (name, data) in &cases {
        sb.file(name, data);
        let url = sb.ok(&["upload", name]).out().to_string();
        assert!(url.starts_with(&sb.root_url()), "{url}");
        assert!(!url.contains(' '), "URL is percent-encoded: {url}");
        let saved = sb.ok(&["download", &url, "out"]);
        let dest = sb.work().join("out").join(name);
        assert_eq!(
            saved.out(),
            Path::new("out").join(name).display().to_string()
        );
        assert_eq!(&std::fs::read(&dest).unwrap(), data, "{name}");
    }
}

#[test]
fn upload_options_and_json() {
    let sb = Sandbox::local();
    sb.file("cat.png", b"not really a png");
    let r = sb.ok(&[
        "--json",
        "upload",
        "cat.png",
        "--key",
        "pets/cat one.png",
        "--title",
        "Cat",
        "--message",
        "hello there",
    ]);
    let v = r.json();
    assert_eq!(v["key"], "pets/cat one.png");
    assert_eq!(v["size"], 16);
    assert_eq!(v["content_type"], "image/png");
    assert_eq!(v["metadata"]["title"], "Cat");
    assert_eq!(v["metadata"]["message"], "hello there");
    assert!(v["etag"].is_string(), "{v}");
    assert!(v["last_modified"].is_string(), "{v}");
    let url = v["url"].as_str().unwrap();
    assert_eq!(url, format!("{}pets/cat%20one.png", sb.root_url()));

    let r = sb.ok(&[
        "upload",
        "cat.png",
        "--key",
        "x.bin",
        "--content-type",
        "text/x-custom",
    ]);
    let v = sb.ok(&["--json", "stat", r.out()]).json();
    assert_eq!(v["content_type"], "text/x-custom");

    // --if-not-exists refuses an existing key
    sb.fails(
        &["upload", "cat.png", "--key", "x.bin", "--if-not-exists"],
        1,
        &["already exists"],
    );
}

#[test]
fn stat_text_and_json() {
    let sb = Sandbox::local();
    sb.file("a.txt", b"hello");
    let url = sb
        .ok(&["upload", "a.txt", "--title", "T"])
        .out()
        .to_string();
    let text = sb.ok(&["stat", &url]).stdout;
    for field in [
        "url",
        "size",
        "etag",
        "content-type",
        "last-modified",
        "metadata.title",
    ] {
        assert!(text.contains(field), "stat lacks {field}: {text}");
    }
    assert!(text.contains("5 (5 B)"), "{text}");
    let v = sb.ok(&["stat", "--json", &url]).json();
    assert_eq!(v["url"], url.as_str());
    assert_eq!(v["size"], 5);
    assert_eq!(v["content_type"], "text/plain");
    assert_eq!(v["metadata"]["title"], "T");
    for k in ["etag", "last_modified", "checksum"] {
        assert!(v[k].is_string(), "{k}: {v}");
    }
    sb.fails(
        &["stat", &format!("{}missing.txt", sb.root_url())],
        1,
        &["not found"],
    );
}

#[test]
fn ls_lists_under_a_prefix() {
    let sb = Sandbox::local();
    sb.file("f", b"12345");
    for key in [
        "photos/a.jpg",
        "photos/b.jpg",
        "photos2/c.jpg",
        "docs/d.txt",
    ] {
        sb.ok(&["upload", "f", "--key", key]);
    }
    let root = sb.root_url();
    let urls = |r: Run| -> Vec<String> {
        r.stdout
            .lines()
            .map(|l| l.rsplit("  ").next().unwrap().to_string())
            .collect()
    };
    let all = urls(sb.ok(&["ls", "-r", &root]));
    assert_eq!(all.len(), 4, "{all:?}");
    // the store's root without its trailing slash, and no argument at all
    assert_eq!(urls(sb.ok(&["ls", "-r", root.trim_end_matches('/')])), all);
    assert_eq!(urls(sb.ok(&["ls", "--recursive"])), all);
    assert_eq!(urls(sb.ok(&["ls", "-r", "--store", "local"])), all);
    // Without -r: one `PRE` line per directory, as `aws s3 ls` shows them.
    let top = sb.ok(&["ls", &root]).stdout;
    let dirs: Vec<&str> = top.lines().filter(|l| l.contains("PRE")).collect();
    assert_eq!(dirs.len(), 3, "{top}");
    assert!(
        dirs[0].trim_start().starts_with("PRE") && dirs[0].ends_with("docs/"),
        "{top}"
    );
    assert_eq!(
        urls(sb.ok(&["ls", &root])),
        [
            format!("{root}docs/"),
            format!("{root}photos/"),
            format!("{root}photos2/")
        ]
    );
    let json = sb.ok(&["ls", "--json", &root]).stdout;
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["prefix"], "docs/", "{json}");

    let photos = urls(sb.ok(&["ls", &format!("{root}photos/")]));
    assert_eq!(
        photos,
        [format!("{root}photos/a.jpg"), format!("{root}photos/b.jpg")]
    );
    // a plain string prefix: `photos` also matches `photos2/`
    assert_eq!(
        urls(sb.ok(&["ls", "-r", &format!("{root}photos")])).len(),
        3
    );
    assert_eq!(
        urls(sb.ok(&["ls", &format!("{root}photos")])),
        [format!("{root}photos/"), format!("{root}photos2/")]
    );

    let line = sb.ok(&["ls", &format!("{root}docs/")]).stdout;
    assert!(line.contains("5 B"), "size: {line}");
    assert!(line.contains('T') && line.contains('Z'), "time: {line}");

    let json = sb.ok(&["ls", "--json", &format!("{root}photos/")]).stdout;
    let items: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["key"], "photos/a.jpg");
    assert_eq!(items[0]["size"], 5);

    assert!(sb.ok(&["ls", &format!("{root}nothing/")]).stdout.is_empty());
    sb.fails(&["ls", "s3://no-such-bucket/"], 2, &["no configured store"]);
    sb.fails(&["ls", "https://example.com/x/"], 1, &["not supported"]);
}

#[test]
fn rm_deletes_and_is_idempotent() {
    let sb = Sandbox::local();
    sb.file("a", b"x");
    let url = sb.ok(&["upload", "a"]).out().to_string();
    let r = sb.ok(&["rm", &url]);
    assert!(r.stdout.is_empty());
    sb.fails(&["stat", &url], 1, &["not found"]);
    sb.ok(&["rm", &url]);
    let v = sb.ok(&["--json", "rm", &url]).json();
    assert_eq!(v["deleted"], true);
    sb.fails(&["rm", &sb.root_url()], 2, &["prefix"]);
}

#[test]
fn cp_in_every_direction() {
    let sb = Sandbox::local();
    let data = pseudo_random(100_000, 0x9E37_79B9_7F4A_7C15);
    sb.file("src.bin", &data);
    let root = sb.root_url();

    // path → URL, and path → URL prefix
    let up = sb.ok(&["cp", "src.bin", &format!("{root}dir/copy.bin")]);
    assert_eq!(up.out(), format!("{root}dir/copy.bin"));
    let up = sb.ok(&["cp", "src.bin", &format!("{root}prefix/")]);
    assert_eq!(up.out(), format!("{root}prefix/src.bin"));

    // URL → URL, same store (server-side copy)
    let cp = sb.ok(&[
        "cp",
        &format!("{root}dir/copy.bin"),
        &format!("{root}dir/again.bin"),
    ]);
    assert_eq!(cp.out(), format!("{root}dir/again.bin"));

    // URL → path
    sb.ok(&["cp", &format!("{root}dir/again.bin"), "back.bin"]);
    assert_eq!(std::fs::read(sb.work().join("back.bin")).unwrap(), data);
    sb.fails(
        &["cp", &format!("{root}dir/again.bin"), "back.bin"],
        1,
        &["already exists"],
    );
    sb.ok(&["cp", "--force", &format!("{root}dir/again.bin"), "back.bin"]);

    // path → path
    sb.fails(&["cp", "src.bin", "other.bin"], 2, &["local paths"]);
}

#[test]
fn cp_between_stores_goes_through_a_temp_file() {
    let sb = Sandbox::bare();
    let (a, b) = (sb.path("a"), sb.path("b"));
    let sb = sb.with_config(&format!(
        "default_store = \"a\"\n[stores.a]\nbackend = \"local\"\nroot = {:?}\n[stores.b]\nbackend = \"local\"\nroot = {:?}\n",
        a.display().to_string(),
        b.display().to_string()
    ));
    sb.file("x.txt", b"across");
    let src = sb
        .ok(&["upload", "x.txt", "--title", "kept"])
        .out()
        .to_string();
    let b_url = format!("file://{}/", std::fs::canonicalize(&b).unwrap().display());
    let dst = sb.ok(&["cp", &src, &b_url]).out().to_string();
    assert_eq!(dst, format!("{b_url}x.txt"));
    assert_eq!(std::fs::read(b.join("x.txt")).unwrap(), b"across");
    let v = sb.ok(&["--json", "stat", &dst]).json();
    assert_eq!(v["metadata"]["title"], "kept");
    assert_eq!(v["content_type"], "text/plain");

    let stores = sb.ok(&["--json", "stores"]).json();
    let names: Vec<&str> = stores
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"a") && names.contains(&"b"), "{stores}");
}

#[test]
fn download_refuses_to_overwrite_without_force() {
    let sb = Sandbox::local();
    sb.file("doc.txt", b"new content");
    let url = sb.ok(&["upload", "doc.txt"]).out().to_string();
    // default destination: the key's last segment, in the current directory
    sb.fails(&["download", &url], 1, &["already exists"]);
    assert_eq!(
        std::fs::read(sb.work().join("doc.txt")).unwrap(),
        b"new content"
    );
    std::fs::write(sb.work().join("doc.txt"), b"old").unwrap();
    let r = sb.fails(&["download", &url], 1, &["--force"]);
    assert!(r.stderr.contains("doc.txt"), "{r:?}");
    assert_eq!(std::fs::read(sb.work().join("doc.txt")).unwrap(), b"old");
    sb.ok(&["download", "--force", &url]);
    assert_eq!(
        std::fs::read(sb.work().join("doc.txt")).unwrap(),
        b"new content"
    );

    // an explicit file name, and --json
    let v = sb.ok(&["--json", "download", &url, "renamed.txt"]).json();
    assert_eq!(v["path"], "renamed.txt");
    assert_eq!(v["size"], 11);
    assert_eq!(
        std::fs::read(sb.work().join("renamed.txt")).unwrap(),
        b"new content"
    );
}

#[test]
fn bad_inputs_fail_with_one_line_and_no_panic() {
    let sb = Sandbox::local();
    sb.file("a.txt", b"a");
    let url = sb.ok(&["upload", "a.txt"]).out().to_string();
    let root = sb.root_url();
    sb.fails(&["stat", "not a url"], 2, &["not a url"]);
    sb.fails(&["stat", "ftp://host/x"], 2, &["unsupported scheme"]);
    sb.fails(
        &["download", "s3://nobody-has-this-bucket/k"],
        2,
        &["no configured store"],
    );
    sb.fails(
        &["download", "file:///etc/passwd"],
        2,
        &["no configured store"],
    );
    sb.fails(&["upload", "missing.txt"], 1, &["missing.txt"]);
    sb.fails(&["upload", "a.txt", "--key", "../escape"], 2, &["'..'"]);
    sb.fails(&["upload", "a.txt", "--key", "a//b"], 2, &["invalid key"]);
    sb.fails(&["upload", "a.txt", "--store", "nope"], 2, &["nope"]);
    sb.fails(&["upload", "."], 2, &["directory"]);
    sb.fails(&["download", &url, "no/such/dir/"], 1, &["does not exist"]);
    sb.fails(&["download", &url, "no/such/file.txt"], 1, &["no/such"]);
    sb.fails(&["presign", &url], 1, &["not supported"]);
    sb.fails(
        &["download", &format!("{root}missing.txt")],
        1,
        &["not found"],
    );
    assert!(!sb.work().join("missing.txt").exists());
    // clap's own usage errors: exit 2, no panic
    for args in [
        &["upload"][..],
        &["frobnicate"],
        &["presign", &url, "--expires", "soon"],
    ] {
        let r = sb.run(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
}

#[test]
fn config_errors_name_the_problem() {
    let sb = Sandbox::bare().with_config("default_store = = 1\n[stores.x\n");
    let r = sb.fails(&["stores"], 2, &["xferkit-test.toml"]);
    assert!(r.stderr.contains("TOML"), "{r:?}");

    let sb = Sandbox::bare().with_config("[stores.m]\nbackend = \"ftp\"\n");
    sb.fails(&["stores"], 2, &["\"ftp\""]);

    let sb = Sandbox::bare().with_config("[stores.local]\nbackend = \"local\"\nbogus = 1\n");
    sb.fails(&["stores"], 2, &["stores.local.bogus"]);

    let sb = Sandbox::bare().with_config("default_store = \"media\"\n");
    sb.fails(&["upload", "x"], 2, &["\"media\""]);

    let sb = Sandbox::bare();
    sb.fails(&["--config", "nope.toml", "stores"], 2, &["nope.toml"]);
}

#[test]
fn without_any_config_the_embedded_local_store_is_used() {
    let sb = Sandbox::bare();
    sb.file("first.txt", b"first run");
    let url = sb.ok(&["upload", "first.txt"]).out().to_string();
    let data = std::fs::canonicalize(sb.path("data")).unwrap();
    assert_eq!(
        url,
        format!("file://{}/xferkit/files/first.txt", data.display())
    );
    assert_eq!(
        std::fs::read(data.join("xferkit/files/first.txt")).unwrap(),
        b"first run"
    );
    let stores = sb.ok(&["stores"]).stdout;
    assert!(stores.contains("* local"), "{stores}");
    assert!(
        !sb.path("home/.local").exists(),
        "XDG_DATA_HOME is honoured"
    );
}

#[test]
fn stores_lists_backends_and_the_default() {
    let sb = Sandbox::local();
    let text = sb.ok(&["stores"]).stdout;
    let local = text.lines().find(|l| l.contains(" local ")).unwrap();
    assert!(local.starts_with('*'), "{text}");
    assert!(local.contains(&sb.root_url()), "{text}");
    assert!(local.contains("copy"), "{text}");
    let v = sb.ok(&["stores", "--json"]).json();
    let local = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "local")
        .unwrap();
    assert_eq!(local["backend"], "local");
    assert_eq!(local["default"], true);
    assert_eq!(local["root_url"], sb.root_url().as_str());
    assert!(
        local["capabilities"]
            .as_array()
            .unwrap()
            .contains(&Value::from("range"))
    );
}

/// A plain HTTP server that ignores `Range`: every request on every
/// connection gets `len` bytes, `chunk` bytes every `pause`. Sends each
/// request line on the returned channel once the first bytes are out, and
/// again when all are. (xfer asks for the first byte before downloading, so
/// the server must take several connections.)
fn serve(len: usize, chunk: usize, pause: Duration) -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok((conn, _)) = listener.accept() {
            let tx = tx.clone();
            std::thread::spawn(move || answer(conn, len, chunk, pause, &tx));
        }
    });
    (port, rx)
}

fn answer(
    mut conn: std::net::TcpStream,
    len: usize,
    chunk: usize,
    pause: Duration,
    tx: &std::sync::mpsc::Sender<String>,
) {
    let mut request_line = String::new();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let _ = reader.read_line(&mut request_line);
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
    }
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(header.as_bytes()).is_err() {
        return;
    }
    let body = pseudo_random(len, 0x9E37_79B9_7F4A_7C15);
    let mut sent = 0;
    let mut told = false;
    while sent < len {
        let n = chunk.min(len - sent);
        if conn.write_all(&body[sent..sent + n]).is_err() {
            return;
        }
        sent += n;
        if !told {
            let _ = tx.send(request_line.clone());
            told = true;
        }
        std::thread::sleep(pause);
    }
    let _ = tx.send(request_line);
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}

#[test]
fn http_links_download_to_their_path_name() {
    let sb = Sandbox::local();
    let (port, rx) = serve(4096, 4096, Duration::ZERO);
    let link = format!("http://127.0.0.1:{port}/files/report%20v2.pdf?X-Signature=SECRET");
    // A link to this machine is refused by default, with the way out named,
    // and nothing is written.
    let r = sb.fails_cleanly(
        &["download", &link],
        2,
        &[
            "refused",
            "127.0.0.1 is a loopback address",
            "--allow-private-links",
        ],
    );
    assert!(!r.stderr.contains("SECRET"), "{r:?}");
    let r = sb.ok(&["--json", "--allow-private-links", "download", &link]);
    let v = r.json();
    assert_eq!(v["path"], "report v2.pdf");
    assert!(
        !r.stdout.contains("SECRET"),
        "the signature stays out of the output: {r:?}"
    );
    assert_eq!(
        std::fs::read(sb.work().join("report v2.pdf")).unwrap(),
        pseudo_random(4096, 0x9E37_79B9_7F4A_7C15)
    );
    assert!(
        rx.recv()
            .unwrap()
            .starts_with("GET /files/report%20v2.pdf?X-Signature=SECRET")
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_transfer_and_leaves_nothing() {
    let sb = Sandbox::local();
    std::fs::create_dir(sb.work().join("dl")).unwrap();
    // 2 MB at 1 KB every 20 ms: takes ~40 s unless stopped. Over 1 MiB, so
    // it streams to a temp file (smaller downloads collect in memory).
    let (port, rx) = serve(2_000_000, 1000, Duration::from_millis(20));
    let link = format!("http://127.0.0.1:{port}/big.bin");
    let mut child = sb
        .command(&["download", "--allow-private-links", &link, "dl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_or_panic();
    rx.recv_timeout(Duration::from_secs(20))
        .expect("xfer connected");
    std::thread::sleep(Duration::from_millis(300)); // bytes are flowing
    let partial: Vec<_> = std::fs::read_dir(sb.work().join("dl")).unwrap().collect();
    assert_eq!(partial.len(), 1, "a temp file while downloading");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status_or_panic();
    assert!(status.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "xfer did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(sb.work().join("dl")).unwrap().collect();
    assert!(left.is_empty(), "nothing partial is left: {left:?}");
}

#[test]
fn upload_from_stdin_stores_the_bytes_and_needs_a_key() {
    let sb = Sandbox::local();
    // Over the local store's one-request size, of a size nobody announced.
    let data = pseudo_random(3_000_000, 0x5EED);
    let mut child = sb
        .command(&["upload", "-", "--key", "in/from stdin.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_or_panic();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("in/from%20stdin.bin"), "{stdout}");
    assert!(std::fs::read(sb.root().join("in/from stdin.bin")).unwrap() == data);
    // Without a key there is no name to store it under: refused, nothing written.
    sb.fails_cleanly(&["upload", "-"], 2, &["reading stdin needs --key"]);
}

#[test]
fn cat_writes_the_object_or_a_range_to_stdout() {
    let sb = Sandbox::local();
    let data = pseudo_random(100_000, 0xCA7);
    sb.file("c.bin", &data);
    let url = sb.ok(&["upload", "c.bin"]).stdout.trim().to_string();
    let bytes = |args: &[&str]| {
        let out = sb.command(args).output_or_panic();
        assert!(out.status.success(), "{args:?}: {out:?}");
        out.stdout
    };
    assert!(bytes(&["cat", &url]) == data);
    assert_eq!(bytes(&["cat", &url, "--range", "2-5"]), &data[2..6]);
    assert_eq!(bytes(&["cat", &url, "--range", "99990-"]), &data[99_990..]);
    assert_eq!(bytes(&["cat", &url, "--range", "-3"]), &data[99_997..]);
    let r = sb.run(&["cat", &url, "--range", "5-2"]);
    assert!(
        r.code == Some(2) && r.stderr.contains("not a range"),
        "{r:?}"
    );
    sb.fails(&["cat", &url, "--range", "200000-"], 1, &["invalid range"]);
}
